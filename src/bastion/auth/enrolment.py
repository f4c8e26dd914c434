"""TOTP enrolment: set up (secret, QR codes, backup codes), confirm with a first code, disable.

Changing the second factor needs more than an access token: the login behind the token must be
recent (``auth.mfa.reauth_window``) or the request must carry the account's password. Otherwise
a stolen token could enrol the thief's authenticator and lock the real user out. Every code or
password tried here is counted by the login throttle like a login attempt.
"""

from __future__ import annotations

from typing import Any

from bastion.auth.errors import AuthError
from bastion.auth.mfa import qr_codes
from bastion.auth.models import User
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.principal import Principal

__all__ = ["MfaEnrolment"]


class MfaEnrolment:
    """The ``/_bastion/auth/mfa/*`` flows for the signed-in principal."""

    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def setup(
        self, principal: Principal, context: RequestContext, *, password: str | None = None
    ) -> dict[str, Any]:
        """Start (or restart) enrolment: a new secret and backup codes, stored (encrypted,
        hashed) and pending until :meth:`verify` proves the authenticator has the secret.
        Refused while MFA is on, so an enrolled factor is only replaced after disabling it."""
        service = self._service
        user = await self._user(principal)
        if user.mfa_enabled:
            raise AuthError("conflict", "MFA is already enabled; disable it first")
        await self._reauthenticate(principal, user, password, context)
        secret = service.totp.new_secret()
        key_id, blob = service.cipher.encrypt(secret, user_id=user.id)
        codes = service.backup_codes.generate()
        hashes = [service.backup_code_hash(user.id, code) for code in codes]
        stored = await service.store.set_mfa_secret(
            user.id, key_id=key_id, blob=blob, code_hashes=hashes
        )
        if not stored:
            raise AuthError("conflict", "MFA is already enabled; disable it first")
        uri = service.totp.provisioning_uri(secret, account=user.username)
        svg, png = qr_codes(uri)
        await service.emit("auth.mfa.setup", context, actor=user.id)
        return {
            "otpauth_uri": uri,
            "secret": secret,
            "qr_svg": svg,
            "qr_png": png,
            "backup_codes": codes,
        }

    async def verify(self, principal: Principal, otp: str, context: RequestContext) -> None:
        """Confirm enrolment with a current code; MFA is on from then on."""
        service = self._service
        user = await self._user(principal)
        if user.mfa_secret is None or user.mfa_key_id is None:
            raise AuthError("conflict", "Start MFA setup first")
        if user.mfa_enabled:
            raise AuthError("conflict", "MFA is already enabled")
        reservation = await self._reserve(user, context)
        secret = await service.read_secret(user)
        step = service.totp.matching_step(secret, otp, at=service.clock()) if secret else None
        if step is None or not await service.store.accept_step(user.id, step):
            await self._failed(user, context, "auth.mfa.verify_failed")
        await service.throttle.succeeded(reservation)
        await service.store.enable_mfa(user.id)
        await service.announce("user", user.id)
        await service.emit("auth.mfa.enabled", context, actor=user.id)

    async def disable(
        self,
        principal: Principal,
        otp: str,
        context: RequestContext,
        *,
        password: str | None = None,
    ) -> None:
        """Turn MFA off: needs a current code or a backup code, and a recent login or the
        password."""
        service = self._service
        user = await self._user(principal)
        if not user.mfa_enabled:
            raise AuthError("conflict", "MFA is not enabled")
        await self._reauthenticate(principal, user, password, context)
        reservation = await self._reserve(user, context)
        if not await service.check_second_factor(user.id, otp):
            await self._failed(user, context, "auth.mfa.disable_failed")
        await service.throttle.succeeded(reservation)
        await service.store.disable_mfa(user.id)
        await service.announce("user", user.id)
        await service.emit("auth.mfa.disabled", context, actor=user.id)

    async def _user(self, principal: Principal) -> User:
        user = await self._service.store.user(principal.subject)
        if user is None:
            raise AuthError("authentication_required")
        return user

    async def _reauthenticate(
        self, principal: Principal, user: User, password: str | None, context: RequestContext
    ) -> None:
        service = self._service
        if password is None:
            session = (
                await service.store.session(principal.session_id) if principal.session_id else None
            )
            window = service.config.mfa.reauth_window
            if session is not None and service.clock() - session.created_at.timestamp() <= window:
                return
            raise AuthError(
                "reauthentication_required",
                "Log in again, or send the account's password, to change the second factor",
            )
        reservation = await self._reserve(user, context)
        if not await service.verify_password(user.password_hash, password):
            await self._failed(user, context, "auth.mfa.reauthentication_failed")
        await service.throttle.succeeded(reservation)

    async def _reserve(self, user: User, context: RequestContext) -> Any:
        # The user's own account and a signed-in session: the address counts as known, so the
        # attempt is limited per (user, address) and per address, like a login.
        service = self._service
        reservation = await service.throttle.reserve(
            user.username, context.client_ip, known_ip=True
        )
        if reservation.verdict is not None:
            service.metrics.auth_attempt("otp", "throttled")
            raise AuthError(
                "login_throttled",
                "Too many failed attempts; try again later",
                retry_after=reservation.verdict.retry_after,
            )
        return reservation

    async def _failed(self, user: User, context: RequestContext, kind: str) -> None:
        service = self._service
        service.metrics.auth_attempt("otp", "failure")
        await service.emit(kind, context, actor=user.id, outcome="failure")
        raise AuthError("invalid_credentials", "The code or password is not valid")

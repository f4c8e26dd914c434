"""TOTP enrolment: set up (secret, QR codes, backup codes), confirm with a first code, disable."""

from __future__ import annotations

from typing import Any

from bastion.auth.errors import AuthError
from bastion.auth.mfa import qr_codes
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.principal import Principal

__all__ = ["MfaEnrolment"]


class MfaEnrolment:
    """The ``/_bastion/auth/mfa/*`` flows for the signed-in principal."""

    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def setup(self, principal: Principal, context: RequestContext) -> dict[str, Any]:
        """Start (or restart) enrolment: a new secret and backup codes, stored (encrypted,
        hashed) and pending until :meth:`verify` proves the authenticator has the secret.
        Refused while MFA is on, so a stolen access token cannot replace the second factor."""
        service = self._service
        user = await service.store.user(principal.subject)
        if user is None:
            raise AuthError("authentication_required")
        if user.mfa_enabled:
            raise AuthError("conflict", "MFA is already enabled; disable it first")
        secret = service.totp.new_secret()
        key_id, blob = service.cipher.encrypt(secret, user_id=user.id)
        codes = service.backup_codes.generate()
        hashes = [
            service.backup_codes.hash(user.id, service.backup_codes.normalize(code) or code)
            for code in codes
        ]
        await service.store.set_mfa_secret(user.id, key_id=key_id, blob=blob, code_hashes=hashes)
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
        user = await service.store.user(principal.subject)
        if user is None or user.mfa_secret is None or user.mfa_key_id is None:
            raise AuthError("conflict", "Start MFA setup first")
        if user.mfa_enabled:
            raise AuthError("conflict", "MFA is already enabled")
        secret = await service.read_secret(user)
        step = service.totp.matching_step(secret, otp, at=service.clock()) if secret else None
        if step is None or not await service.store.accept_step(user.id, step):
            service.metrics.auth_attempt("otp", "failure")
            await service.emit("auth.mfa.verify_failed", context, actor=user.id, outcome="failure")
            raise AuthError("invalid_credentials", "The one-time code is not valid")
        await service.store.enable_mfa(user.id)
        await service.announce("user", user.id)
        await service.emit("auth.mfa.enabled", context, actor=user.id)

    async def disable(self, principal: Principal, otp: str, context: RequestContext) -> None:
        """Turn MFA off; needs a current code or a backup code, not just the access token."""
        service = self._service
        user = await service.store.user(principal.subject)
        if user is None or not user.mfa_enabled:
            raise AuthError("conflict", "MFA is not enabled")
        if not await service.check_second_factor(user.id, otp):
            service.metrics.auth_attempt("otp", "failure")
            await service.emit("auth.mfa.disable_failed", context, actor=user.id, outcome="failure")
            raise AuthError("invalid_credentials", "The one-time code is not valid")
        await service.store.disable_mfa(user.id)
        await service.announce("user", user.id)
        await service.emit("auth.mfa.disabled", context, actor=user.id)

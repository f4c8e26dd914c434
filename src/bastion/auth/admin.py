"""Account administration: what ``bastion users|roles|keys`` and admin endpoints do.

Every change is announced on the change feed (so every instance drops what it cached) and
audited with ``actor`` naming who made it (``cli`` for operator commands).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bastion.auth.api_keys import generate_api_key, hash_api_key, new_key_id
from bastion.auth.config import check_permission
from bastion.auth.errors import AuthError
from bastion.auth.models import User
from bastion.auth.passwords import normalize_username
from bastion.auth.repository import StoredApiKey
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.problems import BastionError
from bastion.store.errors import StoreConflictError

__all__ = ["CreatedApiKey", "IdentityAdmin"]

_STATUSES = ("active", "suspended", "disabled")


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A new API key: ``key`` is shown once and never stored."""

    id: str
    key: str
    expires_at: datetime | None


class IdentityAdmin:
    """Administrative operations over the identity store."""

    def __init__(self, service: IdentityService, *, actor: str = "cli") -> None:
        self._service = service
        self._actor = actor
        self._context = RequestContext()

    async def _user(self, username: str) -> User:
        try:
            name = normalize_username(username)
        except ValueError as exc:
            raise BastionError("bad_request", str(exc)) from None
        user = await self._service.store.user_by_name(name)
        if user is None:
            raise BastionError("not_found", f"no user {name}")
        return user

    async def create_user(
        self, username: str, password: str | None, *, roles: Sequence[str] = ()
    ) -> str:
        """Create an account; returns its id. The password must pass the policy."""
        service = self._service
        try:
            name = normalize_username(username)
        except ValueError as exc:
            raise BastionError("bad_request", str(exc)) from None
        unknown = [role for role in roles if role not in service.roles.names]
        if unknown:
            raise BastionError("bad_request", f"unknown role(s): {', '.join(unknown)}")
        password_hash = None
        if password is not None:
            problems = service.policy.problems(password, username=name)
            if problems:
                raise BastionError(
                    "password_rejected", "; ".join(problems), extensions={"errors": problems}
                )
            password_hash = await service.hasher.hash(password)
        user_id = str(uuid.uuid4())
        try:
            await service.store.create_user(
                user_id=user_id, username=name, password_hash=password_hash, roles=roles
            )
        except StoreConflictError:
            raise AuthError("conflict", f"user {name} already exists") from None
        await self._audit("admin.user.created", user_id, {"username": name, "roles": list(roles)})
        return user_id

    async def set_password(self, username: str, password: str) -> None:
        """Replace a password; every existing session and token of the user ends."""
        service = self._service
        user = await self._user(username)
        problems = service.policy.problems(password, username=user.username)
        if problems:
            raise BastionError(
                "password_rejected", "; ".join(problems), extensions={"errors": problems}
            )
        await service.store.set_password(user.id, await service.hasher.hash(password))
        await self._end_everything(user.id, reason="password_changed")
        await self._audit("admin.user.password_set", user.id)

    async def users(self) -> list[dict[str, Any]]:
        service = self._service
        rows = []
        for user in await service.store.users():
            grants = await service.store.grants(user.id)
            rows.append(
                {
                    "id": user.id,
                    "username": user.username,
                    "status": user.status,
                    "roles": sorted(role for role, resource in grants if not resource),
                    "mfa": user.mfa_enabled,
                    "created_at": user.created_at.isoformat(),
                }
            )
        return rows

    async def set_status(self, username: str, status: str) -> None:
        """``active``, ``suspended`` or ``disabled``; takes effect on every instance at once."""
        if status not in _STATUSES:
            raise BastionError("bad_request", f"status must be one of {', '.join(_STATUSES)}")
        user = await self._user(username)
        await self._service.store.set_status(user.id, status)
        await self._service.announce("user", user.id)
        if status == "disabled":
            await self._end_everything(user.id, reason="disabled")
        kind = {"active": "enabled", "suspended": "suspended", "disabled": "disabled"}[status]
        await self._audit(f"admin.user.{kind}", user.id)

    async def revoke_sessions(self, username: str) -> int:
        """End every session and access token of a user; returns how many sessions ended."""
        user = await self._user(username)
        count = await self._end_everything(user.id, reason="revoked_by_admin")
        await self._audit("admin.user.sessions_revoked", user.id, {"sessions": count})
        return count

    async def _end_everything(self, user_id: str, *, reason: str) -> int:
        service = self._service
        revoked = await service.store.revoke_user_sessions(user_id, reason=reason)
        # Every access token names its session, so revoking the sessions ends them all; the
        # cutoff also refuses tokens from earlier whole seconds (``iat`` has second precision),
        # without refusing a login made right after this change.
        cutoff = datetime.fromtimestamp(int(service.clock()), UTC)
        await service.store.invalidate_tokens(user_id, before=cutoff)
        for session_id in revoked:
            await service.announce("session", session_id)
        await service.announce("user", user_id)
        return len(revoked)

    # -- roles ---------------------------------------------------------------------------------

    def roles(self) -> dict[str, tuple[str, ...]]:
        """Every role and its permissions."""
        return self._service.config.role_table()

    async def grants(self) -> list[tuple[str, str, str]]:
        return await self._service.store.all_grants()

    async def grant(self, username: str, role: str, resource: str = "") -> bool:
        service = self._service
        if role not in service.roles.names:
            raise BastionError("bad_request", f"unknown role {role!r}")
        user = await self._user(username)
        added = await service.store.grant(user.id, role, resource)
        if added:
            await service.announce("user", user.id)
            await self._audit("admin.role.granted", user.id, {"role": role, "resource": resource})
        return added

    async def revoke(self, username: str, role: str, resource: str = "") -> bool:
        user = await self._user(username)
        removed = await self._service.store.revoke_grant(user.id, role, resource)
        if removed:
            await self._service.announce("user", user.id)
            await self._audit("admin.role.revoked", user.id, {"role": role, "resource": resource})
        return removed

    # -- API keys ------------------------------------------------------------------------------

    async def create_api_key(
        self,
        username: str,
        *,
        name: str = "",
        scopes: Sequence[str] = (),
        expires_in: float | None = None,
    ) -> CreatedApiKey:
        service = self._service
        for scope in scopes:
            try:
                check_permission(scope)
            except ValueError as exc:
                raise BastionError("bad_request", str(exc)) from None
        if expires_in is not None and expires_in <= 0:
            raise BastionError("bad_request", "an API key's lifetime must be positive")
        user = await self._user(username)
        key = generate_api_key()
        key_id = new_key_id()
        expires_at = (
            datetime.fromtimestamp(service.clock(), UTC) + timedelta(seconds=expires_in)
            if expires_in is not None
            else None
        )
        await service.store.add_api_key(
            key_id=key_id,
            key_hash=hash_api_key(key),
            user_id=user.id,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
        )
        await self._audit("admin.key.created", key_id, {"user": user.id, "scopes": list(scopes)})
        return CreatedApiKey(key_id, key, expires_at)

    async def api_keys(self, username: str | None = None) -> list[tuple[StoredApiKey, str]]:
        user_id = (await self._user(username)).id if username else None
        return await self._service.store.api_keys(user_id)

    async def revoke_api_key(self, key_id: str) -> bool:
        revoked = await self._service.store.revoke_api_key(key_id)
        if revoked:
            await self._service.announce("api_key", key_id)
            await self._audit("admin.key.revoked", key_id)
        return revoked

    async def rotate_signing(self) -> str:
        """A new signing key; the previous ones keep verifying (``keep_signing_keys``)."""
        before = self._service.signing.ring.kids
        ring = await self._service.signing.rotate()
        if not before <= ring.kids:
            self._service.credentials.clear()
        kid = ring.signing.kid
        await self._audit("admin.key.signing_rotated", kid)
        return kid

    async def _audit(self, kind: str, target: str, detail: dict[str, Any] | None = None) -> None:
        await self._service.emit(
            kind, self._context, actor=self._actor, target=target, detail=detail or {}
        )

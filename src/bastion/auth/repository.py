"""SQL storage of the identity capability: one class, one method per question or change.

Every write that other instances must learn about (a revoked session, a changed account, a
revoked key) appends a row to ``bastion_auth_changes`` in the same transaction, so the change
and its announcement commit together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bastion.auth.models import (
    ApiKeyRecord,
    AuthChange,
    BackupCode,
    RefreshToken,
    RoleGrant,
    SessionRecord,
    User,
)
from bastion.store.database import Database
from bastion.store.models import utc_now

__all__ = ["ChangeKind", "IdentityStore", "RefreshOutcome", "StoredApiKey"]

ChangeKind = Literal["session", "user", "api_key"]


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What presenting a refresh token found: ``rotated`` (first use, now spent), ``reused``
    (already spent: the family must die), ``expired``, ``revoked`` or ``unknown``."""

    status: Literal["rotated", "reused", "expired", "revoked", "unknown"]
    session_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """An API key's record as the request path needs it."""

    id: str
    user_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> StoredApiKey:
        return cls(
            id=record.id,
            user_id=record.user_id,
            name=record.name,
            scopes=tuple(json.loads(record.scopes)),
            created_at=record.created_at,
            expires_at=record.expires_at,
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
        )


_CHANGES_AFTER = (
    select(AuthChange.id, AuthChange.kind, AuthChange.subject)
    .where(AuthChange.id > bindparam("last_id"))
    .order_by(AuthChange.id)
    .limit(bindparam("limit"))
)
_CHANGES_SINCE = (
    select(AuthChange.id, AuthChange.kind, AuthChange.subject)
    .where((AuthChange.id > bindparam("last_id")) | (AuthChange.at >= bindparam("since")))
    .order_by(AuthChange.id)
    .limit(bindparam("limit"))
)
"""The change feed's reads, without and with its overlap window
(:meth:`IdentityStore.changes_after`)."""


class IdentityStore:
    """Users, grants, sessions, refresh tokens, API keys, MFA state and the change feed."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # -- users -------------------------------------------------------------------------------

    async def create_user(
        self, *, user_id: str, username: str, password_hash: str | None, roles: Sequence[str]
    ) -> None:
        """Insert a user with global roles; a taken username raises ``StoreConflictError``."""
        now = utc_now()
        async with self._database.session() as session:
            session.add(
                User(
                    id=user_id,
                    username=username,
                    password_hash=password_hash,
                    status="active",
                    created_at=now,
                    updated_at=now,
                    mfa_enabled=False,
                )
            )
            await session.flush()
            for role in roles:
                session.add(RoleGrant(user_id=user_id, role=role, resource="", created_at=now))
            await session.commit()

    async def user_by_name(self, username: str) -> User | None:
        async with self._database.session() as session:
            result: User | None = await session.scalar(
                select(User).where(User.username == username)
            )
            return result

    async def user(self, user_id: str) -> User | None:
        async with self._database.session() as session:
            return await session.get(User, user_id)

    async def users(self) -> list[User]:
        async with self._database.session() as session:
            return list((await session.scalars(select(User).order_by(User.username))).all())

    async def set_status(self, user_id: str, status: str) -> bool:
        """Change an account's status; announced so every instance re-reads it at once."""
        return await self._update_user(user_id, status=status)

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        """Store a new password hash (a rehash on login, or a password change)."""
        return await self._update_user(user_id, password_hash=password_hash, announce=False)

    async def invalidate_tokens(self, user_id: str, *, before: datetime) -> bool:
        """Refuse every access token of ``user_id`` issued before ``before``."""
        return await self._update_user(user_id, tokens_valid_after=before)

    async def _update_user(self, user_id: str, *, announce: bool = True, **values: Any) -> bool:
        values["updated_at"] = utc_now()
        async with self._database.session() as session:
            result = await session.execute(update(User).where(User.id == user_id).values(**values))
            changed = _rowcount(result) > 0
            if changed and announce:
                _announce(session, "user", user_id)
            await session.commit()
        return changed

    # -- roles and grants ------------------------------------------------------------------------

    async def grants(self, user_id: str) -> list[tuple[str, str]]:
        """``(role, resource)`` pairs; resource ``""`` is a global role."""
        query = select(RoleGrant.role, RoleGrant.resource).where(RoleGrant.user_id == user_id)
        async with self._database.session() as session:
            return [(role, resource) for role, resource in (await session.execute(query)).all()]

    async def grant(self, user_id: str, role: str, resource: str = "") -> bool:
        """Give ``role`` (on ``resource``); False when the user already had it."""
        async with self._database.session() as session:
            exists = await session.scalar(
                select(func.count())
                .select_from(RoleGrant)
                .where(
                    RoleGrant.user_id == user_id,
                    RoleGrant.role == role,
                    RoleGrant.resource == resource,
                )
            )
            if exists:
                return False
            session.add(
                RoleGrant(user_id=user_id, role=role, resource=resource, created_at=utc_now())
            )
            _announce(session, "user", user_id)
            await session.commit()
        return True

    async def revoke_grant(self, user_id: str, role: str, resource: str = "") -> bool:
        """Take ``role`` (on ``resource``) away; False when the user did not have it."""
        async with self._database.session() as session:
            result = await session.execute(
                delete(RoleGrant).where(
                    RoleGrant.user_id == user_id,
                    RoleGrant.role == role,
                    RoleGrant.resource == resource,
                )
            )
            removed = _rowcount(result) > 0
            if removed:
                _announce(session, "user", user_id)
            await session.commit()
        return removed

    async def all_grants(self) -> list[tuple[str, str, str]]:
        """Every ``(username, role, resource)``, for listings."""
        query = (
            select(User.username, RoleGrant.role, RoleGrant.resource)
            .join(User, User.id == RoleGrant.user_id)
            .order_by(User.username, RoleGrant.role, RoleGrant.resource)
        )
        async with self._database.session() as session:
            return [(u, r, res) for u, r, res in (await session.execute(query)).all()]

    # -- sessions and refresh tokens --------------------------------------------------------------

    async def create_session(
        self,
        record: SessionRecord,
        *,
        refresh_hash: str,
        refresh_expires: datetime,
    ) -> None:
        """Store a new session with its first refresh token."""
        # Plain INSERTs in one transaction: a login's database work sits on the event loop, and
        # the ORM's unit of work cost twice as much loop time here (measured).
        row = {column.key: getattr(record, column.key) for column in SessionRecord.__table__.c}
        async with self._database.session() as session:
            await session.execute(insert(SessionRecord).values(**row))
            await session.execute(
                insert(RefreshToken).values(
                    token_hash=refresh_hash,
                    session_id=record.id,
                    issued_at=record.created_at,
                    expires_at=refresh_expires,
                    used_at=None,
                )
            )
            await session.commit()

    async def session(self, session_id: str) -> SessionRecord | None:
        async with self._database.session() as session:
            return await session.get(SessionRecord, session_id)

    async def sessions(self, user_id: str, *, active_only: bool = True) -> list[SessionRecord]:
        query = select(SessionRecord).where(SessionRecord.user_id == user_id)
        if active_only:
            query = query.where(
                SessionRecord.revoked_at.is_(None), SessionRecord.expires_at > utc_now()
            )
        async with self._database.session() as session:
            return list((await session.scalars(query.order_by(SessionRecord.created_at))).all())

    async def known_address(self, username: str, client_ip: str, *, since: datetime) -> bool:
        """Whether ``username`` logged in from ``client_ip`` since ``since``."""
        query = (
            select(func.count())
            .select_from(SessionRecord)
            .join(User, User.id == SessionRecord.user_id)
            .where(
                User.username == username,
                SessionRecord.client_ip == client_ip,
                SessionRecord.created_at >= since,
            )
        )
        async with self._database.session() as session:
            return bool(await session.scalar(query))

    async def revoke_sessions(
        self, session_ids: Iterable[str], *, reason: str, user_id: str | None = None
    ) -> list[str]:
        """Revoke the given sessions (restricted to ``user_id`` when given, so users can only
        revoke their own); returns the ids actually revoked now."""
        ids = list(session_ids)
        if not ids:
            return []
        condition: list[Any] = [SessionRecord.id.in_(ids), SessionRecord.revoked_at.is_(None)]
        if user_id is not None:
            condition.append(SessionRecord.user_id == user_id)
        return await self._revoke(condition, reason)

    async def revoke_user_sessions(self, user_id: str, *, reason: str) -> list[str]:
        """Revoke every live session of ``user_id``."""
        condition = [SessionRecord.user_id == user_id, SessionRecord.revoked_at.is_(None)]
        return await self._revoke(condition, reason)

    async def _revoke(self, condition: list[Any], reason: str) -> list[str]:
        async with self._database.session() as session:
            ids = list((await session.scalars(select(SessionRecord.id).where(*condition))).all())
            if ids:
                await session.execute(
                    update(SessionRecord)
                    .where(SessionRecord.id.in_(ids), SessionRecord.revoked_at.is_(None))
                    .values(revoked_at=utc_now(), revoked_reason=reason)
                )
                for session_id in ids:
                    _announce(session, "session", session_id)
            await session.commit()
        return ids

    async def use_refresh(self, token_hash: str, *, now: datetime) -> RefreshOutcome:
        """Spend a refresh token exactly once.

        The conditional update (``used_at IS NULL``) is the single point of truth: of two
        concurrent uses, on any instance, exactly one sees a row updated; the other sees a
        reuse.
        """
        async with self._database.session() as session:
            row = (
                await session.execute(
                    select(
                        RefreshToken.session_id,
                        RefreshToken.expires_at,
                        SessionRecord.user_id,
                        SessionRecord.revoked_at,
                    )
                    .join(SessionRecord, SessionRecord.id == RefreshToken.session_id)
                    .where(RefreshToken.token_hash == token_hash)
                )
            ).first()
            if row is None:
                return RefreshOutcome("unknown")
            session_id, expires_at, user_id, revoked_at = row
            if revoked_at is not None:
                return RefreshOutcome("revoked", session_id, user_id)
            spent = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            await session.commit()
        if _rowcount(spent) == 0:
            return RefreshOutcome("reused", session_id, user_id)
        if expires_at <= now:
            return RefreshOutcome("expired", session_id, user_id)
        return RefreshOutcome("rotated", session_id, user_id)

    async def add_refresh(
        self,
        *,
        token_hash: str,
        session_id: str,
        expires_at: datetime,
        session_expires: datetime,
    ) -> None:
        """The next refresh token of a session; the session lives as long as it."""
        now = utc_now()
        async with self._database.session() as session:
            session.add(
                RefreshToken(
                    token_hash=token_hash,
                    session_id=session_id,
                    issued_at=now,
                    expires_at=expires_at,
                )
            )
            await session.execute(
                update(SessionRecord)
                .where(SessionRecord.id == session_id)
                .values(last_seen_at=now, expires_at=session_expires)
            )
            await session.commit()

    async def touch_sessions(self, seen: Mapping[str, datetime]) -> None:
        """Batched ``last_seen_at`` updates."""
        await self._touch(SessionRecord, SessionRecord.last_seen_at, seen)

    # -- API keys ------------------------------------------------------------------------------

    async def add_api_key(
        self,
        *,
        key_id: str,
        key_hash: str,
        user_id: str,
        name: str,
        scopes: Sequence[str],
        expires_at: datetime | None,
    ) -> None:
        async with self._database.session() as session:
            session.add(
                ApiKeyRecord(
                    id=key_id,
                    key_hash=key_hash,
                    user_id=user_id,
                    name=name,
                    scopes=json.dumps(list(scopes)),
                    created_at=utc_now(),
                    expires_at=expires_at,
                )
            )
            await session.commit()

    async def api_key_by_hash(self, key_hash: str) -> StoredApiKey | None:
        async with self._database.session() as session:
            record = await session.scalar(
                select(ApiKeyRecord).where(ApiKeyRecord.key_hash == key_hash)
            )
        return StoredApiKey.of(record) if record is not None else None

    async def api_keys(self, user_id: str | None = None) -> list[tuple[StoredApiKey, str]]:
        """Keys with their owner's username, optionally of one user."""
        query = select(ApiKeyRecord, User.username).join(User, User.id == ApiKeyRecord.user_id)
        if user_id is not None:
            query = query.where(ApiKeyRecord.user_id == user_id)
        async with self._database.session() as session:
            rows = (await session.execute(query.order_by(ApiKeyRecord.created_at))).all()
        return [(StoredApiKey.of(record), username) for record, username in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._database.session() as session:
            result = await session.execute(
                update(ApiKeyRecord)
                .where(ApiKeyRecord.id == key_id, ApiKeyRecord.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
            revoked = _rowcount(result) > 0
            if revoked:
                _announce(session, "api_key", key_id)
            await session.commit()
        return revoked

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Batched ``last_used_at`` updates."""
        await self._touch(ApiKeyRecord, ApiKeyRecord.last_used_at, used)

    async def _touch(self, model: Any, column: Any, stamps: Mapping[str, datetime]) -> None:
        if not stamps:
            return
        async with self._database.session() as session:
            for key, stamp in stamps.items():
                await session.execute(update(model).where(model.id == key).values({column: stamp}))
            await session.commit()

    # -- MFA -----------------------------------------------------------------------------------

    async def set_mfa_secret(
        self, user_id: str, *, key_id: str, blob: bytes, code_hashes: Sequence[str]
    ) -> bool:
        """Store a pending (not yet enabled) TOTP secret and its backup codes, replacing any
        earlier pending enrolment; False (nothing written) when MFA is already enabled."""
        async with self._database.session() as session:
            result = await session.execute(
                update(User)
                .where(User.id == user_id, User.mfa_enabled.is_(False))
                .values(
                    mfa_secret=blob, mfa_key_id=key_id, mfa_last_step=None, updated_at=utc_now()
                )
            )
            if _rowcount(result) == 0:
                # MFA was enabled meanwhile (a concurrent verify): its codes stay untouched.
                await session.rollback()
                return False
            await session.execute(delete(BackupCode).where(BackupCode.user_id == user_id))
            for code_hash in code_hashes:
                session.add(BackupCode(user_id=user_id, code_hash=code_hash))
            await session.commit()
        return True

    async def enable_mfa(self, user_id: str) -> None:
        """Turn MFA on (after the first code proved the enrolment)."""
        async with self._database.session() as session:
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(mfa_enabled=True, updated_at=utc_now())
            )
            _announce(session, "user", user_id)
            await session.commit()

    async def disable_mfa(self, user_id: str) -> None:
        """Turn MFA off and forget the secret, its replay state and the backup codes."""
        async with self._database.session() as session:
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(
                    mfa_enabled=False,
                    mfa_secret=None,
                    mfa_key_id=None,
                    mfa_last_step=None,
                    updated_at=utc_now(),
                )
            )
            await session.execute(delete(BackupCode).where(BackupCode.user_id == user_id))
            _announce(session, "user", user_id)
            await session.commit()

    async def accept_step(self, user_id: str, step: int) -> bool:
        """Record TOTP time step ``step`` as used; False when it (or a later one) already was.

        One conditional update, so two instances racing with the same code cannot both win.
        """
        async with self._database.session() as session:
            result = await session.execute(
                update(User)
                .where(
                    User.id == user_id,
                    (User.mfa_last_step.is_(None)) | (User.mfa_last_step < step),
                )
                .values(mfa_last_step=step)
            )
            await session.commit()
        return _rowcount(result) > 0

    async def use_backup_code(self, user_id: str, code_hash: str) -> bool:
        """Spend a backup code; False when unknown or already used."""
        async with self._database.session() as session:
            result = await session.execute(
                update(BackupCode)
                .where(
                    BackupCode.user_id == user_id,
                    BackupCode.code_hash == code_hash,
                    BackupCode.used_at.is_(None),
                )
                .values(used_at=utc_now())
            )
            await session.commit()
        return _rowcount(result) > 0

    async def rewrap_mfa_secret(self, user_id: str, *, key_id: str, blob: bytes) -> None:
        """Replace the stored ciphertext after re-encrypting it with the newest key."""
        async with self._database.session() as session:
            await session.execute(
                update(User).where(User.id == user_id).values(mfa_secret=blob, mfa_key_id=key_id)
            )
            await session.commit()

    # -- change feed ---------------------------------------------------------------------------

    async def changes_after(
        self, last_id: int, *, since: datetime | None = None, limit: int = 1000
    ) -> list[tuple[int, str, str]]:
        """Changes with an id above ``last_id`` or (with ``since``) written at or after it,
        oldest first. The second condition catches rows that committed after a row with a
        higher id (PostgreSQL hands out ids before commit, so they can become visible out of
        order). Polled every ``revocation_poll``: one statement built once, read without a
        session (:meth:`Database.read`)."""
        values: dict[str, Any] = {"last_id": last_id, "limit": limit}
        if since is None:
            statement = _CHANGES_AFTER
        else:
            statement = _CHANGES_SINCE
            values["since"] = since
        rows = await self._database.read(statement, values)
        return [(row[0], row[1], row[2]) for row in rows]

    async def latest_change(self) -> int:
        async with self._database.session() as session:
            value = await session.scalar(select(func.max(AuthChange.id)))
        return int(value or 0)

    async def prune_changes(self, *, before: datetime) -> int:
        async with self._database.session() as session:
            result = await session.execute(delete(AuthChange).where(AuthChange.at < before))
            await session.commit()
        return _rowcount(result)

    async def announce(self, kind: ChangeKind, subject: str) -> None:
        """Announce a change made elsewhere (for example a cache that must be dropped)."""
        async with self._database.session() as session:
            await session.execute(
                insert(AuthChange).values(kind=kind, subject=subject, at=utc_now())
            )
            await session.commit()


def _announce(session: AsyncSession, kind: ChangeKind, subject: str) -> None:
    session.add(AuthChange(kind=kind, subject=subject, at=utc_now()))


def _rowcount(result: Any) -> int:
    return int(result.rowcount)

"""Tables of the identity capability (migration ``0002``).

Everything security-relevant lives here, in the SQL store every instance shares: users and
their status, sessions, refresh tokens (one family per session), API keys (hashes only), TOTP
state (encrypted secret, last accepted step), backup codes (hashes), the login throttle and the
change feed other instances read to drop what they cached.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from bastion.store.models import Base, UtcDateTime, utc_now

__all__ = [
    "ApiKeyRecord",
    "AuthChange",
    "BackupCode",
    "RefreshToken",
    "RoleGrant",
    "SessionRecord",
    "ThrottleRecord",
    "User",
]

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_SERIAL = BigInteger().with_variant(Integer(), "sqlite")


class User(Base):
    """An account. ``username`` is normalised (NFKC, case-folded) and unique."""

    __tablename__ = "bastion_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """argon2id PHC string; ``None`` for accounts that only use API keys."""
    status: Mapped[str] = mapped_column(String(16), default="active")
    """``active``, ``suspended`` or ``disabled``."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """Access tokens issued before this instant are refused (password change, revoke-all)."""
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    mfa_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """TOTP secret, AES-GCM encrypted with the ``mfa_encryption`` key named by ``mfa_key_id``."""
    mfa_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Highest TOTP time step accepted: a code is good once, and never for an older step."""


class RoleGrant(Base):
    """A role held by a user: globally (``resource = ""``) or on one resource
    (``resource = "projects:42"``)."""

    __tablename__ = "bastion_role_grants"
    __table_args__ = (UniqueConstraint("user_id", "role", "resource"),)

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("bastion_users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class SessionRecord(Base):
    """One login: the refresh-token family and what the user sees in their session list."""

    __tablename__ = "bastion_sessions"
    __table_args__ = (Index("ix_bastion_sessions_user_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("bastion_users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    mfa: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether the login passed a second factor."""
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RefreshToken(Base):
    """A refresh token, by the SHA-256 of its secret. Using it sets ``used_at`` (once): a second
    use is a reuse and revokes the whole session (RFC 9700 §4.14.2)."""

    __tablename__ = "bastion_refresh_tokens"
    __table_args__ = (Index("ix_bastion_refresh_tokens_session_id", "session_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("bastion_sessions.id", ondelete="CASCADE"))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiKeyRecord(Base):
    """An API key, by the SHA-256 of the whole key; the key itself is shown once."""

    __tablename__ = "bastion_api_keys"
    __table_args__ = (Index("ix_bastion_api_keys_user_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("bastion_users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128), default="")
    scopes: Mapped[str] = mapped_column(Text, default="[]")
    """JSON list of permissions the key is limited to; empty: the owner's permissions."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class BackupCode(Base):
    """A single-use MFA backup code, by its keyed hash."""

    __tablename__ = "bastion_backup_codes"
    __table_args__ = (UniqueConstraint("user_id", "code_hash"),)

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("bastion_users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ThrottleRecord(Base):
    """Login failures counted under one key (``pair:…``, ``ip:…``, ``user:…``)."""

    __tablename__ = "bastion_login_throttle"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AuthChange(Base):
    """The change feed: each revocation or account change, in order. Every instance reads the
    rows after the last one it saw and drops what it cached about the subject."""

    __tablename__ = "bastion_auth_changes"
    __table_args__ = (Index("ix_bastion_auth_changes_at", "at"),)

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``session`` (revoked), ``user`` (status, roles, grants, tokens), ``api_key`` (revoked)."""
    subject: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)

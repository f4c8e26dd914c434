"""Declarative base shared by every capability's tables, and the ``bastion_keys`` table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "KeyRecord", "UtcDateTime", "utc_now"]

# Deterministic constraint names, so later migrations can drop and alter them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL.

    SQLite has no time zones: values are stored as naive UTC and given ``UTC`` back on load.
    Naive datetimes are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps stored by Bastion must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Base of every Bastion table; each table's name starts with ``bastion_`` or is fixed by
    the public contract (``audit_events``)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class KeyRecord(Base):
    """One row of ``bastion_keys``: a generated secret or key pair for one purpose.

    ``generation`` numbers a purpose's keys from 1; ``(purpose, generation)`` is unique, which
    makes "create the first key" and "rotate" race-safe across processes: concurrent writers
    try to insert the same generation and exactly one succeeds.
    """

    __tablename__ = "bastion_keys"
    # Also the index of look-ups by purpose: its leading column is ``purpose``.
    __table_args__ = (UniqueConstraint("purpose", "generation"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Key id, published as the JWT ``kid`` for signing keys."""
    purpose: Mapped[str] = mapped_column(String(64))
    """What the key is for: ``jwt_signing``, ``mfa_encryption``, ``audit_hmac``, ``csrf``…"""
    generation: Mapped[int] = mapped_column(Integer)
    algorithm: Mapped[str] = mapped_column(String(32))
    """``EdDSA``, ``ES256``, ``HS256``, ``AES-256-GCM``…: how the material is used."""
    material: Mapped[bytes] = mapped_column(LargeBinary)
    """Private or secret key bytes; AES-GCM wrapped when ``wrapped`` is true."""
    public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """Public key bytes of an asymmetric key, never wrapped."""
    wrapped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    not_after: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """After this instant the key is no longer used, not even to verify."""
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """Set when rotation dropped the key from the active set."""

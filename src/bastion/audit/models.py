"""The audit tables (migration ``0004``): the events and the head of their chain.

``audit_events`` holds one row per event (DESIGN.md §9). ``bastion_audit_chain`` holds one row per
chain: the last ``seq`` and ``hash`` appended, and the checkpoint left by pruning. Writers lock
that row for the length of an append, which serialises appends from every process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ColumnElement,
    Index,
    String,
    Text,
    and_,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from bastion.store.models import Base, UtcDateTime, utc_now

__all__ = [
    "ACTOR_MAX",
    "CHAIN_ID",
    "CLIENT_IP_MAX",
    "GENESIS_HASH",
    "KIND_MAX",
    "OUTCOME_MAX",
    "REQUEST_ID_MAX",
    "TARGET_MAX",
    "AuditChainRow",
    "AuditEventRow",
    "in_chain",
]

CHAIN_ID = "main"
"""The one chain of a database; every instance appends to it."""
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event, and the anchor of a chain that was never pruned."""

KIND_MAX = 64
OUTCOME_MAX = 16
ACTOR_MAX = 128
TARGET_MAX = 256
CLIENT_IP_MAX = 64
REQUEST_ID_MAX = 128


class AuditEventRow(Base):
    """One event of the chain. Every column but ``hash`` is covered by ``hash``."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_kind_seq", "kind", "seq"),
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        CheckConstraint("seq > 0", name="seq_positive"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """Position in the chain, from 1 without gaps."""
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    """When the event was emitted (UTC, microseconds)."""
    kind: Mapped[str] = mapped_column(String(KIND_MAX))
    outcome: Mapped[str] = mapped_column(String(OUTCOME_MAX))
    actor: Mapped[str | None] = mapped_column(String(ACTOR_MAX), nullable=True)
    target: Mapped[str | None] = mapped_column(String(TARGET_MAX), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(CLIENT_IP_MAX), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    """Redacted detail as canonical JSON text (sorted keys, no whitespace); hashed as stored."""
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The ``bastion_keys`` id of the HMAC key of ``hash``; ``NULL``: plain SHA-256."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainRow(Base):
    """The head of a chain and its pruning checkpoint (the anchor)."""

    __tablename__ = "bastion_audit_chain"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    """``seq`` of the last event appended; 0 before the first."""
    hash: Mapped[str] = mapped_column(String(64))
    """``hash`` of the last event appended (:data:`GENESIS_HASH` before the first)."""
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    """``seq`` of the last pruned event; the chain continues at ``anchor_seq + 1``."""
    anchor_hash: Mapped[str] = mapped_column(String(64))
    """``hash`` of the last pruned event: the ``prev_hash`` the first remaining event has."""
    anchor_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    anchor_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """HMAC of the anchor with ``anchor_key_id``, so the checkpoint itself cannot be moved."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


def in_chain(seq: Any) -> ColumnElement[bool]:
    """``anchor_seq < seq <= head seq``, read from the head row by the same statement."""
    head = select(AuditChainRow.seq).where(AuditChainRow.id == CHAIN_ID).scalar_subquery()
    anchor = select(AuditChainRow.anchor_seq).where(AuditChainRow.id == CHAIN_ID).scalar_subquery()
    return and_(seq > anchor, seq <= head)

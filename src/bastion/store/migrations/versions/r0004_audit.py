"""Audit log: the hash-chained events and the head row that serialises appends.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("target", sa.String(256), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
        # The chain starts at 1: a row at 0 or below could only be forged.
        sa.CheckConstraint("seq > 0", name=op.f("ck_audit_events_seq_positive")),
    )
    op.create_index("ix_audit_events_ts", "audit_events", ["ts"])
    op.create_index("ix_audit_events_kind_seq", "audit_events", ["kind", "seq"])
    op.create_index("ix_audit_events_actor_seq", "audit_events", ["actor", "seq"])
    chain = op.create_table(
        "bastion_audit_chain",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
        sa.Column("anchor_key_id", sa.String(64), nullable=True),
        sa.Column("anchor_mac", sa.String(64), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_audit_chain")),
    )
    # The head row exists from the start, so every append only ever locks and updates it.
    op.bulk_insert(
        chain,
        [
            {
                "id": "main",
                "seq": 0,
                "hash": _GENESIS,
                "anchor_seq": 0,
                "anchor_hash": _GENESIS,
                "anchor_key_id": None,
                "anchor_mac": None,
                "updated_at": datetime.now(UTC).replace(tzinfo=None)
                if op.get_context().dialect.name == "sqlite"
                else datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("bastion_audit_chain")
    op.drop_index("ix_audit_events_actor_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_kind_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_ts", table_name="audit_events")
    op.drop_table("audit_events")

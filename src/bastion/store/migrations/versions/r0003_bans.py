"""Bans: one penalty record per client, shared by every process without Redis.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bastion_bans",
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("until", _TS, nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("client", name=op.f("pk_bastion_bans")),
    )
    op.create_index("ix_bastion_bans_updated_at", "bastion_bans", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_bastion_bans_updated_at", table_name="bastion_bans")
    op.drop_table("bastion_bans")

"""bastion_keys: generated keys shared by every instance.

Revision ID: 0001
Revises:
Create Date: 2025-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "bastion_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("material", sa.LargeBinary(), nullable=False),
        sa.Column("public", sa.LargeBinary(), nullable=True),
        sa.Column("wrapped", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_keys")),
        sa.UniqueConstraint(
            "purpose", "generation", name=op.f("uq_bastion_keys_purpose_generation")
        ),
    )


def downgrade() -> None:
    op.drop_table("bastion_keys")

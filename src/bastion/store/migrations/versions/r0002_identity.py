"""Identity: users, role grants, sessions, refresh tokens, API keys, backup codes, the login
throttle and the change feed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def _user_fk() -> sa.ForeignKey:
    return sa.ForeignKey("bastion_users.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "bastion_users",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("username", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("tokens_valid_after", _TS, nullable=True),
        sa.Column("mfa_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("mfa_secret", sa.LargeBinary(), nullable=True),
        sa.Column("mfa_key_id", sa.String(64), nullable=True),
        sa.Column("mfa_last_step", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_users")),
        sa.UniqueConstraint("username", name=op.f("uq_bastion_users_username")),
    )
    op.create_table(
        "bastion_role_grants",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(36), _user_fk(), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(255), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_role_grants")),
        sa.UniqueConstraint(
            "user_id", "role", "resource", name=op.f("uq_bastion_role_grants_user_id_role_resource")
        ),
    )
    op.create_table(
        "bastion_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), _user_fk(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(512), nullable=False),
        sa.Column("mfa", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_sessions")),
    )
    op.create_index("ix_bastion_sessions_user_id", "bastion_sessions", ["user_id"])
    op.create_table(
        "bastion_refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("bastion_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_bastion_refresh_tokens")),
    )
    op.create_index(
        "ix_bastion_refresh_tokens_session_id", "bastion_refresh_tokens", ["session_id"]
    )
    op.create_table(
        "bastion_api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), _user_fk(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_bastion_api_keys_key_hash")),
    )
    op.create_index("ix_bastion_api_keys_user_id", "bastion_api_keys", ["user_id"])
    op.create_table(
        "bastion_backup_codes",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(36), _user_fk(), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_backup_codes")),
        sa.UniqueConstraint(
            "user_id", "code_hash", name=op.f("uq_bastion_backup_codes_user_id_code_hash")
        ),
    )
    op.create_table(
        "bastion_login_throttle",
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", _TS, nullable=False),
        sa.Column("blocked_until", _TS, nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_bastion_login_throttle")),
    )
    op.create_table(
        "bastion_auth_changes",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bastion_auth_changes")),
    )
    op.create_index("ix_bastion_auth_changes_at", "bastion_auth_changes", ["at"])


def downgrade() -> None:
    op.drop_index("ix_bastion_auth_changes_at", table_name="bastion_auth_changes")
    op.drop_table("bastion_auth_changes")
    op.drop_table("bastion_login_throttle")
    op.drop_table("bastion_backup_codes")
    op.drop_index("ix_bastion_api_keys_user_id", table_name="bastion_api_keys")
    op.drop_table("bastion_api_keys")
    op.drop_index("ix_bastion_refresh_tokens_session_id", table_name="bastion_refresh_tokens")
    op.drop_table("bastion_refresh_tokens")
    op.drop_index("ix_bastion_sessions_user_id", table_name="bastion_sessions")
    op.drop_table("bastion_sessions")
    op.drop_table("bastion_role_grants")
    op.drop_table("bastion_users")

"""Alembic environment: migrates the connection handed over by :mod:`bastion.store.migrate`.

Bastion never reads ``alembic.ini`` nor opens its own connection here: the caller holds the
migration lock on that connection (PostgreSQL advisory lock, SQLite lock file) for the whole run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy.engine import Connection

# Imported for their side effect: each registers its capability's tables on Base.metadata.
import bastion.audit.models
import bastion.auth.models
import bastion.ratelimit.models  # noqa: F401  (one binding of `bastion` covers the imports)
from bastion.store.models import Base

VERSION_TABLE = "bastion_alembic_version"

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection) or context.is_offline_mode():
    raise RuntimeError("Bastion's migrations run through bastion.store.migrate.upgrade()")
applied: list[str] = config.attributes.setdefault("applied", [])


def _record(
    ctx: MigrationContext,
    step: MigrationInfo,
    heads: Collection[Any],
    run_args: Mapping[str, Any],
) -> None:
    if step.is_upgrade and step.up_revision_id is not None:
        applied.append(step.up_revision_id)


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    # SQLite alters tables by copying them; batch mode lets one revision serve both databases.
    render_as_batch=connection.dialect.name == "sqlite",
    on_version_apply=_record,
)
with context.begin_transaction():
    context.run_migrations()

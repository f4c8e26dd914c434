"""The migrations build exactly the schema the models describe, on both SQL backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import bastion.auth.models  # noqa: F401  (registers the identity tables)
from bastion.store.database import Database
from bastion.store.migrate import VERSION_TABLE
from bastion.store.models import Base


def _differences(sync_connection: Any) -> list[Any]:
    context = MigrationContext.configure(
        sync_connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
    )
    return [
        diff
        for diff in compare_metadata(context, Base.metadata)
        if not (diff[0] == "remove_table" and diff[1].name == VERSION_TABLE)
    ]


async def test_migrated_schema_matches_the_models(migrated: Database) -> None:
    async with migrated.engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []

"""Migrations: applied once, idempotent, serialised across instances, failures wrapped."""

from __future__ import annotations

import asyncio
import fcntl
from importlib import resources
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.migrate import (
    MIGRATION_LOCK_KEY,
    VERSION_TABLE,
    alembic_config,
    current_revisions,
    head_revisions,
    upgrade,
)

ALL_REVISIONS = ["0001", "0002", "0003", "0004"]
"""Every revision, oldest first: what an upgrade of an empty database applies."""


async def _tables(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    return set(names)


async def test_upgrade_applies_every_revision_once(database: Database) -> None:
    assert await current_revisions(database) == set()
    assert await upgrade(database) == ALL_REVISIONS
    assert await current_revisions(database) == head_revisions() == {ALL_REVISIONS[-1]}
    assert {"bastion_keys", VERSION_TABLE} <= await _tables(database)
    assert await upgrade(database) == []
    assert await current_revisions(database) == head_revisions()


async def test_keys_table_matches_the_model(migrated: Database) -> None:
    async with migrated.engine.connect() as connection:

        def describe(sync: object) -> tuple[set[str], list[list[str]]]:
            inspector = inspect(sync)
            columns = {column["name"] for column in inspector.get_columns("bastion_keys")}
            uniques = [u["column_names"] for u in inspector.get_unique_constraints("bastion_keys")]
            return columns, uniques

        columns, uniques = await connection.run_sync(describe)
    assert columns == {
        "id",
        "purpose",
        "generation",
        "algorithm",
        "material",
        "public",
        "wrapped",
        "created_at",
        "not_after",
        "retired_at",
    }
    assert uniques == [["purpose", "generation"]]


async def test_concurrent_upgrades_apply_each_revision_exactly_once(database_url: str) -> None:
    databases = [Database.from_url(database_url) for _ in range(3)]
    for database in databases:
        await database.start()
    try:
        results = await asyncio.gather(*(upgrade(database) for database in databases))
        assert sorted(results) == [[], [], ALL_REVISIONS]
        assert await current_revisions(databases[0]) == head_revisions()
    finally:
        for database in databases:
            await database.close()


async def test_upgrade_waits_for_the_postgres_advisory_lock(
    postgres_database_url: str,
) -> None:
    holder = await asyncpg.connect(
        make_url(postgres_database_url).set(drivername="postgresql").render_as_string(False)
    )
    database = Database.from_url(postgres_database_url)
    await database.start()
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        with pytest.raises(StoreError, match=r"migration lock .* not released within 0.3s"):
            await upgrade(database, lock_timeout=0.3)
        assert await current_revisions(database) == set()

        waiting = asyncio.create_task(upgrade(database, lock_timeout=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        assert await waiting == ALL_REVISIONS
    finally:
        await holder.close()
        await database.close()


async def test_upgrade_waits_for_the_sqlite_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "bastion.db"
    database = Database.from_url(f"sqlite+aiosqlite:///{path}")
    await database.start()
    try:
        with open(f"{path}.migrate.lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            with pytest.raises(StoreError, match=r"lock file of bastion.db was not released"):
                await upgrade(database, lock_timeout=0.3)
        assert await upgrade(database) == ALL_REVISIONS
    finally:
        await database.close()


async def test_in_memory_sqlite_migrates_without_a_lock_file() -> None:
    database = Database.from_url("sqlite+aiosqlite://")
    await database.start()
    try:
        assert await upgrade(database) == ALL_REVISIONS
        assert "bastion_keys" in await _tables(database)
    finally:
        await database.close()


async def test_a_failing_migration_raises_store_error(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("CREATE TABLE bastion_keys (id INTEGER)"))
    with pytest.raises(StoreError, match="migration failed"):
        await upgrade(database)


async def test_unreachable_database_raises_store_error(closed_port: int) -> None:
    database = Database.from_url(
        f"postgresql+asyncpg://bastion@127.0.0.1:{closed_port}/x", timeout=1
    )
    with pytest.raises(StoreError, match="migration failed"):
        await upgrade(database)
    with pytest.raises(StoreError, match="not started"):
        await current_revisions(database)


async def test_current_revisions_wraps_driver_errors(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {VERSION_TABLE} (unexpected INTEGER)"))
    with pytest.raises(StoreError, match="cannot read the schema version"):
        await current_revisions(database)


def test_the_environment_refuses_to_run_outside_bastion() -> None:
    with pytest.raises(RuntimeError, match=r"bastion\.store\.migrate\.upgrade"):
        command.upgrade(alembic_config(), "heads")


def test_migrations_ship_inside_the_package() -> None:
    package = resources.files("bastion.store.migrations")
    assert package.joinpath("env.py").is_file()
    revisions = [
        entry.name
        for entry in package.joinpath("versions").iterdir()
        if entry.name.endswith(".py") and entry.name != "__init__.py"
    ]
    assert "r0001_bastion_keys.py" in revisions

"""Apply Bastion's Alembic migrations, safely from several instances starting at once.

No ``alembic.ini`` is involved: :func:`alembic_config` points Alembic at the migrations shipped
inside the package. A new revision is written with::

    python -c "from alembic import command; from bastion.store.migrate import alembic_config; \\
        command.revision(alembic_config(), 'add bastion_sessions')"

and then renamed ``rNNNN_<slug>.py`` with ``revision = "NNNN"``.
"""

from __future__ import annotations

import asyncio
import fcntl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.store.database import Database
from bastion.store.errors import StoreError, describe

__all__ = [
    "MIGRATION_LOCK_KEY",
    "VERSION_TABLE",
    "alembic_config",
    "current_revisions",
    "head_revisions",
    "upgrade",
]

VERSION_TABLE = "bastion_alembic_version"
"""Alembic's version table, named so it never collides with an application's own."""
MIGRATION_LOCK_KEY = int.from_bytes(b"bastion\x00", "big")
"""PostgreSQL advisory lock key held while migrating (a fixed signed 64-bit value)."""

_SCRIPT_LOCATION = Path(__file__).with_name("migrations")
_LOCK_POLL_SECONDS = 0.1


def alembic_config() -> Config:
    """An Alembic configuration for the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    return config


def head_revisions() -> set[str]:
    """The newest revision of each migration branch shipped with this version."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


async def current_revisions(database: Database) -> set[str]:
    """The revisions the database is at (empty before the first migration)."""
    try:
        async with database.engine.connect() as connection:
            return await connection.run_sync(_current_heads)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise StoreError(f"cannot read the schema version: {describe(exc)}") from exc


async def upgrade(database: Database, *, lock_timeout: float = 300.0) -> list[str]:
    """Apply pending migrations and return the revision ids applied, oldest first.

    The run holds a lock for its whole duration: a PostgreSQL advisory lock on
    :data:`MIGRATION_LOCK_KEY`, or an exclusive lock on ``<database>.migrate.lock`` for an
    SQLite file. An instance that waited finds the schema current and applies nothing.
    """
    try:
        async with database.maintenance_connection() as connection:
            if database.dialect == "postgresql":
                async with _postgres_lock(connection, lock_timeout):
                    return await connection.run_sync(_upgrade)
            async with _file_lock(database.sqlite_path, lock_timeout):
                return await connection.run_sync(_upgrade)
    except StoreError:
        raise
    except (SQLAlchemyError, OSError, TimeoutError, CommandError) as exc:
        raise StoreError(f"migration failed: {describe(exc)}") from exc


def _upgrade(connection: Connection) -> list[str]:
    config = alembic_config()
    applied: list[str] = []
    config.attributes["connection"] = connection
    config.attributes["applied"] = applied
    # "heads": revisions added on parallel branches are all applied.
    command.upgrade(config, "heads")
    return applied


def _current_heads(connection: Connection) -> set[str]:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return set(context.get_current_heads())


async def _poll(acquire: Callable[[], Awaitable[bool]], patience: float, what: str) -> None:
    deadline = time.monotonic() + patience
    while not await acquire():
        if time.monotonic() >= deadline:
            raise StoreError(f"{what} was not released within {patience:g}s")
        await asyncio.sleep(_LOCK_POLL_SECONDS)


@asynccontextmanager
async def _postgres_lock(connection: AsyncConnection, patience: float) -> AsyncIterator[None]:
    """Session-level advisory lock; it survives the commits of the migration transactions."""
    key = {"key": MIGRATION_LOCK_KEY}

    async def acquire() -> bool:
        result = await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key)
        locked = bool(result.scalar_one())
        # End the implicit transaction: Alembic must see a connection outside any transaction.
        await connection.commit()
        return locked

    await _poll(acquire, patience, "the migration lock (held by another instance)")
    try:
        yield
    finally:
        await connection.rollback()
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
        await connection.commit()


@asynccontextmanager
async def _file_lock(database_path: Path | None, patience: float) -> AsyncIterator[None]:
    """Exclusive ``flock`` beside an SQLite file; in-memory databases need none."""
    if database_path is None:
        yield
        return
    handle: IO[Any] = open(  # noqa: ASYNC230, SIM115 - opening a local lock file does not block
        f"{database_path}.migrate.lock", "a"
    )
    try:

        async def acquire() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        await _poll(acquire, patience, f"the migration lock file of {database_path.name}")
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()

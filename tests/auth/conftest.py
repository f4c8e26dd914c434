"""Fixtures of the identity tests: a migrated database on every SQL backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bastion.store.database import Database
from bastion.store.migrate import upgrade


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[Database]:
    """A started database with every migration applied (SQLite, then PostgreSQL)."""
    database = Database.from_url(database_url)
    await database.start()
    try:
        await upgrade(database)
        yield database
    finally:
        await database.close()

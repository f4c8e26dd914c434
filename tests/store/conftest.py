"""Fixtures for the store tests: started databases, migrated or not, and an unused port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from bastion.store.database import Database
from bastion.store.migrate import upgrade


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A started :class:`Database` over a new, empty database (SQLite, then PostgreSQL)."""
    db = Database.from_url(database_url)
    await db.start()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def migrated(database: Database) -> Database:
    """:func:`database` with every migration applied."""
    await upgrade(database)
    return database


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

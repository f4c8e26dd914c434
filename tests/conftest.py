"""Fixtures for the test servers every package may use: Redis and PostgreSQL.

``make test`` starts both (``scripts/services.sh``) and exports ``BASTION_TEST_REDIS_URL`` and
``BASTION_TEST_DATABASE_URL``; for a manual run, ``make services-up`` then
``eval "$(scripts/services.sh env)"``. When a server is not configured or does not answer, the
tests that need it are skipped, except in CI (``CI=true``) where that fails them.

- ``redis_url`` / ``clean_redis_url``: the Redis URL (the latter after ``FLUSHDB``).
- ``postgres_url``: the PostgreSQL server's own test database (shared; prefer the next one).
- ``postgres_database_url``: a new empty PostgreSQL database for one test, dropped after it.
- ``database_url``: parametrized over a new SQLite file and a new PostgreSQL database, so one
  test covers both SQL backends.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import pytest
import redis
from sqlalchemy.engine import make_url

REDIS_ENV = "BASTION_TEST_REDIS_URL"
POSTGRES_ENV = "BASTION_TEST_DATABASE_URL"
_START_HINT = 'run `make services-up` and `eval "$(scripts/services.sh env)"`, or `make test`'
_CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the test servers are required)", pytrace=False)
    pytest.skip(message)


def _run_isolated(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in its own thread and event loop, leaving the calling
    thread's event-loop state (which pytest-asyncio manages) untouched."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The ``postgresql://`` DSN asyncpg accepts for a ``postgresql+asyncpg://`` URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (database 0); skipped, or failed in CI, when it does not answer."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        _unavailable(f"{REDIS_ENV} is not set: {_START_HINT}")
    client = redis.Redis.from_url(
        url, socket_timeout=_CONNECT_TIMEOUT, socket_connect_timeout=_CONNECT_TIMEOUT
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        _unavailable(f"the test Redis at {url} does not answer ({exc}): {_START_HINT}")
    finally:
        client.close()
    return url


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """The test Redis URL, its database emptied before the test."""
    client = redis.Redis.from_url(redis_url, socket_timeout=_CONNECT_TIMEOUT)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL (``postgresql+asyncpg://``) of the server's ``bastion_test`` database;
    skipped, or failed in CI, when it does not answer."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        _unavailable(f"{POSTGRES_ENV} is not set: {_START_HINT}")

    async def check() -> None:
        connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=_CONNECT_TIMEOUT)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    try:
        _run_isolated(check)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        _unavailable(f"the test PostgreSQL at {shown} does not answer ({exc}): {_START_HINT}")
    return url


@pytest.fixture
async def postgres_database_url(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for this test only (dropped afterwards)."""
    admin_dsn = _asyncpg_dsn(postgres_url)
    name = f"bastion_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_dsn, timeout=_CONNECT_TIMEOUT)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(False)
    finally:
        admin = await asyncpg.connect(admin_dsn, timeout=_CONNECT_TIMEOUT)
        try:
            # FORCE ends connections a failed test left open.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _sqlite_url(directory: Path, name: str = "bastion.db") -> str:
    """An ``sqlite+aiosqlite://`` URL for a database file in ``directory``."""
    return f"sqlite+aiosqlite:///{directory / name}"


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database for this test: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return _sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_database_url")
    return url

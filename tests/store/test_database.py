"""Database: engine options per dialect, ping, error wrapping, UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import Executable

from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.errors import StoreConflictError, StoreError, describe
from bastion.store.models import UtcDateTime


async def test_start_ping_and_dialect(database: Database, database_url: str) -> None:
    assert database.dialect == database_url.split("+", 1)[0]
    await database.ping()
    await database.start()  # idempotent
    async with database.session() as session:
        assert await session.scalar(text("SELECT 1")) == 1


def test_config_carries_timeout_and_pool_size(tmp_path: Path) -> None:
    config = StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", timeout="750ms", pool_size=3
    )
    db = Database(config)
    assert (db.timeout, db.pool_size) == (0.75, 3)


async def test_sqlite_creates_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "bastion.db"
    db = Database.from_url(f"sqlite+aiosqlite:///{path}", timeout=1.5)
    await db.start()
    try:
        assert path.exists()
        assert db.sqlite_path == path
        async with db.engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "busy_timeout": 1500,
            "foreign_keys": 1,
            "synchronous": 1,
        }
    finally:
        await db.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:shared?mode=memory&uri=true",
        "postgresql+asyncpg://h/db",
    ],
)
def test_sqlite_path_is_none_without_a_file(url: str) -> None:
    assert Database.from_url(url).sqlite_path is None


def test_display_url_masks_the_password() -> None:
    db = Database.from_url("postgresql+asyncpg://bastion:s3cret@db.internal:5432/bastion")
    assert "s3cret" not in db.display_url
    assert db.display_url.startswith("postgresql+asyncpg://bastion:***@db.internal")


async def test_calls_before_start_raise_store_error() -> None:
    db = Database.from_url("sqlite+aiosqlite://")
    with pytest.raises(StoreError, match="not started"):
        await db.ping()
    with pytest.raises(StoreError, match="not started"):
        async with db.session():
            pass
    await db.close()  # closing an unstarted database is harmless


async def test_start_fails_with_store_error_when_nothing_listens(closed_port: int) -> None:
    db = Database.from_url(
        f"postgresql+asyncpg://bastion@127.0.0.1:{closed_port}/bastion", timeout=1.0
    )
    with pytest.raises(StoreError, match="database ping failed") as caught:
        await db.start()
    assert caught.value.__cause__ is not None
    with pytest.raises(StoreError, match="not started"):
        db.engine  # noqa: B018 - a failed start leaves nothing behind


async def test_session_wraps_driver_errors(database: Database) -> None:
    metadata = MetaData()
    table = Table("things", metadata, Column("id", Integer, primary_key=True))
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    async with database.session() as session:
        await session.execute(insert(table).values(id=1))
        await session.commit()

    with pytest.raises(StoreConflictError, match="conflicting write"):
        await _wrapped(database, insert(table).values(id=1))
    with pytest.raises(StoreError, match="database call failed") as caught:
        await _wrapped(database, text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, StoreConflictError)


async def _wrapped(database: Database, statement: Executable) -> None:
    async with database.session() as session:
        await session.execute(statement)
        await session.commit()


async def test_session_leaves_other_errors_alone(database: Database) -> None:
    with pytest.raises(KeyError):
        async with database.session():
            raise KeyError("not a database error")


async def test_maintenance_connection_has_no_statement_timeout(database: Database) -> None:
    async with database.maintenance_connection() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        if database.dialect == "postgresql":
            await connection.execute(text("SELECT pg_sleep(:s)"), {"s": database.timeout + 0.5})


async def test_pooled_postgres_statements_time_out(postgres_database_url: str) -> None:
    db = Database.from_url(postgres_database_url, timeout=0.5)
    await db.start()
    try:
        with pytest.raises(StoreError, match="database call failed"):
            await _wrapped(db, text("SELECT pg_sleep(3)"))
    finally:
        await db.close()


async def test_utc_datetime_round_trips_as_aware_utc(database: Database) -> None:
    metadata = MetaData()
    table = Table(
        "stamps",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", UtcDateTime, nullable=True),
    )
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    paris = timezone(timedelta(hours=1))
    moment = datetime(2025, 3, 1, 13, 30, 15, 123456, tzinfo=paris)
    async with database.session() as session:
        await session.execute(insert(table), [{"id": 1, "at": moment}, {"id": 2, "at": None}])
        await session.commit()
        rows = {row.id: row.at for row in await session.execute(select(table.c.id, table.c.at))}
    assert rows[1] == moment
    assert rows[1].tzinfo is UTC
    assert rows[1].hour == 12
    assert rows[2] is None

    with pytest.raises(StoreError, match="database call failed"):
        await _wrapped(database, insert(table).values(id=3, at=datetime(2025, 1, 1)))


async def test_read_runs_one_statement_with_bound_values(database: Database) -> None:
    """The session-less read: bound values (a UTC timestamp included) go through the columns'
    types both ways, rows come back as tuples, and driver errors become StoreError."""
    metadata = MetaData()
    table = Table(
        "polled",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", UtcDateTime, nullable=False),
    )
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    start = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    async with database.session() as session:
        rows = [{"id": n, "at": start + timedelta(seconds=n)} for n in range(1, 6)]
        await session.execute(insert(table), rows)
        await session.commit()
    statement = (
        select(table.c.id, table.c.at)
        .where(table.c.id > bindparam("after_id"), table.c.at >= bindparam("since"))
        .order_by(table.c.id)
    )
    paris = timezone(timedelta(hours=1))
    since = datetime(2026, 12, 2, 6, 0, 3, tzinfo=paris)  # 05:00:03 UTC
    found = await database.read(statement, {"after_id": 1, "since": since})
    assert found == [
        (3, start + timedelta(seconds=3)),
        (4, start + timedelta(seconds=4)),
        (5, start + timedelta(seconds=5)),
    ]
    assert all(type(row) is tuple and row[1].tzinfo is UTC for row in found)
    assert await database.read(statement, {"after_id": 5, "since": since}) == []
    with pytest.raises(StoreError, match="database call failed"):
        await database.read(text("SELECT * FROM no_such_table"))


def test_utc_datetime_refuses_non_datetimes_from_the_database() -> None:
    column_type = UtcDateTime()
    with pytest.raises(TypeError, match="expected a datetime"):
        column_type.process_result_value("2025-01-01", sqlite.dialect())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), "timed out"),
        (OSError("connection refused\nsecond line"), "OSError: connection refused"),
        (ValueError(""), "ValueError"),
        (RuntimeError("x" * 500), "RuntimeError: " + "x" * 185 + "…"),
    ],
)
def test_describe_is_short_and_single_line(error: BaseException, expected: str) -> None:
    assert describe(error) == expected

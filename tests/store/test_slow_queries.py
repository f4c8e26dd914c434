"""Slow-query log: which statements are reported, what a report holds (never parameters), the
metric, and the wiring from ``store.slow_query`` through the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from bastion.engine import Bastion
from bastion.observe.metrics import Metrics
from bastion.settings import Settings
from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.slow_queries import statement_kind
from bastion.store.stores import Stores

SECRET = "hunter2-correct-horse"

# Below any real statement's duration: every statement is "slow", without relying on timing.
ALWAYS = 1e-9
NEVER = 3600.0


def slow_lines(logs: list[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "slow query" and needle in e["statement"]]


def started(url: str, threshold: float, seen: list[str], *, timeout: float = 2.0) -> Database:
    config = StoreConfig(database_url=url, slow_query=threshold, timeout=timeout)
    return Database(config, on_slow_query=seen.append)


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("SELECT 1", "select"),
        ("  select * from t", "select"),
        ("(SELECT 1) UNION (SELECT 2)", "select"),
        ("\n\tINSERT INTO t VALUES (1)", "insert"),
        ("UPDATE t SET a = 1", "update"),
        ("delete from t", "delete"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "other"),
        ("PRAGMA journal_mode=WAL", "other"),
        ("SELECT pg_advisory_lock(1)", "select"),
        ("", "other"),
        ("   ", "other"),
        ("selective_function()", "other"),
    ],
)
def test_statement_kind_is_a_bounded_label(statement: str, kind: str) -> None:
    assert statement_kind(statement) == kind


def test_threshold_is_a_duration_defaulting_to_100ms() -> None:
    assert StoreConfig().slow_query == 0.1
    assert StoreConfig(slow_query="250ms").slow_query == 0.25
    assert StoreConfig(slow_query=0).slow_query == 0.0


def test_zero_disables_the_log(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    assert Database(StoreConfig(database_url=url, slow_query=0)).slow_queries is None
    assert Database(StoreConfig(database_url=url)).slow_queries is not None


async def test_slow_statement_is_logged_without_its_parameters(database_url: str) -> None:
    seen: list[str] = []
    db = started(database_url, ALWAYS, seen)
    await db.start()
    try:
        with capture_logs() as logs:
            async with db.session() as session:
                statement = text("SELECT :secret AS echoed")
                assert await session.scalar(statement, {"secret": SECRET}) == SECRET
    finally:
        await db.close()
    [line] = slow_lines(logs, "echoed")
    assert line["log_level"] == "warning"
    assert line["logger_name"] == "bastion.store"
    assert line["database"] == database_url.split("+", 1)[0]
    assert line["op"] == "select"
    assert line["duration_ms"] >= 0
    assert "rows" in line
    assert "failed" not in line
    assert SECRET not in repr(logs)
    assert "select" in seen


async def test_write_reports_its_row_count(database_url: str) -> None:
    seen: list[str] = []
    db = started(database_url, ALWAYS, seen)
    await db.start()
    try:
        async with db.session() as session:
            await session.execute(text("CREATE TABLE slow_t (a INTEGER)"))
            await session.execute(text("INSERT INTO slow_t VALUES (1), (2), (3)"))
            await session.commit()
            with capture_logs() as logs:
                update = text("UPDATE slow_t SET a = a + 1 WHERE a >= :floor")
                await session.execute(update, {"floor": 2})
                await session.commit()
    finally:
        await db.close()
    [line] = slow_lines(logs, "UPDATE slow_t")
    assert (line["op"], line["rows"]) == ("update", 2)
    assert seen.count("update") == 1


async def test_fast_statements_are_not_logged(database_url: str) -> None:
    seen: list[str] = []
    db = started(database_url, NEVER, seen)
    await db.start()
    try:
        with capture_logs() as logs:
            async with db.session() as session:
                assert await session.scalar(text("SELECT 41 + 1")) == 42
    finally:
        await db.close()
    assert [e for e in logs if e["event"] == "slow query"] == []
    assert seen == []


async def test_failed_statement_is_logged_as_failed(database_url: str) -> None:
    seen: list[str] = []
    db = started(database_url, ALWAYS, seen)
    await db.start()
    try:
        with capture_logs() as logs, pytest.raises(StoreError):
            async with db.session() as session:
                await session.execute(text("SELECT * FROM no_such_table_here"))
    finally:
        await db.close()
    [line] = slow_lines(logs, "no_such_table_here")
    assert line["failed"] is True
    assert line["rows"] is None


@pytest.mark.postgres
async def test_postgres_statement_over_the_threshold(postgres_database_url: str) -> None:
    # pg_sleep guarantees the statement's duration is above the threshold.
    seen: list[str] = []
    db = started(postgres_database_url, 0.02, seen)
    await db.start()
    try:
        with capture_logs() as logs:
            async with db.session() as session:
                await session.execute(text("SELECT pg_sleep(0.05)"))
    finally:
        await db.close()
    [line] = slow_lines(logs, "pg_sleep")
    assert line["duration_ms"] >= 50
    assert line["database"] == "postgresql"


@pytest.mark.postgres
async def test_postgres_statement_timeout_is_reported(postgres_database_url: str) -> None:
    seen: list[str] = []
    db = started(postgres_database_url, 0.02, seen, timeout=0.2)
    await db.start()
    # Start-up's own ping (SELECT 1) passes the 20 ms threshold too on a slow machine.
    seen.clear()
    try:
        with capture_logs() as logs, pytest.raises(StoreError):
            async with db.session() as session:
                await session.execute(text("SELECT pg_sleep(5)"))
    finally:
        await db.close()
    [line] = slow_lines(logs, "pg_sleep")
    assert line["failed"] is True
    assert line["duration_ms"] >= 200
    assert seen == ["select"]


async def test_metric_counts_slow_statements_by_kind(tmp_path: Path) -> None:
    metrics = Metrics()
    config = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db", slow_query=ALWAYS)
    stores = Stores(config, on_slow_query=metrics.store_slow_query)
    await stores.database.start()
    try:
        async with stores.database.session() as session:
            await session.execute(text("CREATE TABLE m (a INTEGER)"))
            await session.execute(text("DELETE FROM m"))
    finally:
        await stores.close()
    exposition = metrics.exposition().decode()
    assert 'bastion_store_slow_queries_total{op="delete"} 1.0' in exposition
    assert 'bastion_store_slow_queries_total{op="other"} 1.0' in exposition
    assert 'bastion_store_slow_queries_total{op="select"}' in exposition  # the start-up ping


def test_engine_feeds_the_metric(tmp_path: Path) -> None:
    settings = Settings(store={"database_url": f"sqlite+aiosqlite:///{tmp_path}/e.db"})
    bastion = Bastion(settings)
    log = bastion.stores.database.slow_queries
    assert log is not None
    assert log.threshold == 0.1
    assert log.on_slow == bastion.metrics.store_slow_query

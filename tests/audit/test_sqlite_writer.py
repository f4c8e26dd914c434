"""Appends to a SQLite file run whole in the writer's own thread: all or nothing, on a
connection as durable as the pool's, usable again after any failure, stopped by ``close``."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain_harness import audit_store, execute, rows, sample_event, started_stores
from bastion.audit.chain import (
    AuditChain,
    AuditDataError,
    PreparedEvent,
    SigningKey,
    _is_data_error,
    _sqlite_timestamp,
    canonical_bytes,
    chain_hash,
)
from bastion.audit.config import AuditConfig
from bastion.audit.log import AuditLog
from bastion.audit.sqlite_writer import SqliteTransactions
from bastion.store.errors import StoreConflictError, StoreError
from bastion.store.stores import Stores

THREAD_NAME = "bastion-audit-sqlite"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "t.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE t (n INTEGER NOT NULL)")
    connection.close()
    return path


@pytest.fixture
async def transactions(database: Path) -> AsyncIterator[SqliteTransactions]:
    writer = SqliteTransactions(database, timeout=0.2)
    try:
        yield writer
    finally:
        await writer.close()


def numbers(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]
    finally:
        connection.close()


def insert(*values: int) -> Callable[[sqlite3.Connection], int]:
    def work(connection: sqlite3.Connection) -> int:
        connection.executemany("INSERT INTO t (n) VALUES (?)", [(v,) for v in values])
        return len(values)

    return work


async def test_a_transaction_commits_and_returns_its_result(
    transactions: SqliteTransactions, database: Path
) -> None:
    assert await transactions.run(insert(1, 2, 3)) == 3
    assert numbers(database) == [1, 2, 3]


class Refused(Exception):
    pass


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (Refused("work failed after writing"), Refused),
        (sqlite3.IntegrityError("constraint"), sqlite3.IntegrityError),
        (sqlite3.OperationalError("disk I/O error"), sqlite3.OperationalError),
        (ValueError("non-hexadecimal number"), ValueError),
    ],
    ids=["any-exception", "integrity", "operational", "value"],
)
async def test_a_failed_transaction_leaves_nothing_and_the_next_one_works(
    transactions: SqliteTransactions,
    database: Path,
    failure: BaseException,
    raised: type[BaseException],
) -> None:
    def failing(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO t (n) VALUES (99)")
        raise failure

    with pytest.raises(raised):
        await transactions.run(failing)
    assert numbers(database) == []
    await transactions.run(insert(1))
    assert numbers(database) == [1]


async def test_every_transaction_runs_in_one_thread_that_is_not_the_loops(
    transactions: SqliteTransactions,
) -> None:
    def where(_connection: sqlite3.Connection) -> tuple[int, str]:
        return threading.get_ident(), threading.current_thread().name

    seen = {await transactions.run(where) for _ in range(5)}
    assert len(seen) == 1
    ident, name = seen.pop()
    assert ident != threading.get_ident()
    assert name == THREAD_NAME


async def test_the_connection_is_as_durable_as_the_pools(
    transactions: SqliteTransactions,
) -> None:
    def settings_of(connection: sqlite3.Connection) -> tuple[str, int]:
        (journal,) = connection.execute("PRAGMA journal_mode").fetchone()
        (synchronous,) = connection.execute("PRAGMA synchronous").fetchone()
        return journal, synchronous

    # WAL with synchronous=NORMAL (1), what bastion.store.database gives every connection.
    assert await transactions.run(settings_of) == ("wal", 1)


async def test_a_locked_database_fails_after_the_busy_timeout_then_recovers(
    transactions: SqliteTransactions, database: Path
) -> None:
    """Another writer holding the write lock past the busy timeout: the transaction fails (the
    caller retries), and once the lock is gone the next one commits on a fresh connection."""
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await transactions.run(insert(1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    await transactions.run(insert(2))
    assert numbers(database) == [2]


async def test_the_event_loop_keeps_running_while_a_transaction_waits_for_a_lock(
    transactions: SqliteTransactions, database: Path
) -> None:
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.ensure_future(transactions.run(insert(1)))
        ticks = 0
        while not pending.done():
            await asyncio.sleep(0.01)
            ticks += 1
        with pytest.raises(sqlite3.OperationalError):
            await pending
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ticks >= 5  # the 0.2 s busy wait happened off the loop


async def test_a_cancelled_caller_does_not_undo_a_handed_over_transaction(
    transactions: SqliteTransactions, database: Path
) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(connection: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)
        connection.execute("INSERT INTO t (n) VALUES (7)")

    pending = asyncio.ensure_future(transactions.run(slow))
    await asyncio.to_thread(started.wait, 5)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    release.set()
    await transactions.run(insert(8))
    assert numbers(database) == [7, 8]


def writer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


async def threads_back_to(count: int) -> None:
    """Wait until ``count`` writer threads are left: a closed writer's thread ends soon, but a
    slow machine may take longer than a second to schedule its exit (30 s at most here)."""
    async with asyncio.timeout(30):
        while len(writer_threads()) != count:
            await asyncio.sleep(0.01)


async def test_close_finishes_what_was_handed_over_then_stops_and_run_starts_again(
    database: Path,
) -> None:
    writer = SqliteTransactions(database, timeout=1.0)
    before = len(writer_threads())
    pending = asyncio.ensure_future(writer.run(insert(1, 2)))
    await asyncio.sleep(0)
    await writer.close()
    assert await pending == 2
    await writer.close()  # idempotent
    assert numbers(database) == [1, 2]
    await threads_back_to(before)
    await writer.run(insert(3))
    await writer.close()
    assert numbers(database) == [1, 2, 3]


# ------------------------------------------------------------------ the chain on a SQLite file


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with started_stores(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}") as stores:
        yield stores


def prepared(number: int) -> PreparedEvent:
    return PreparedEvent(
        ts_us=1_764_000_000_000_000 + number,
        kind="inspect.detected",
        outcome="success",
        actor=None,
        target=f"/hello/{number}",
        client_ip="127.0.0.1",
        request_id=f"req-{number}",
        detail='{"n":' + str(number) + "}",
    )


@pytest.mark.parametrize("key", [None, SigningKey("k1", b"\x01" * 32)], ids=["sha256", "hmac"])
async def test_a_batch_is_hashed_as_chain_hash_defines_it(
    sqlite_stores: Stores, key: SigningKey | None
) -> None:
    chain = AuditChain(sqlite_stores.database)
    try:
        head = await chain.head()
        events = [prepared(n) for n in range(1, 6)]
        appended = await chain.append(events, key)
    finally:
        await chain.close()
    prev = head.hash
    for (seq, digest), event in zip(appended, events, strict=True):
        canonical = canonical_bytes(
            seq,
            event.ts_us,
            event.kind,
            event.outcome,
            event.actor,
            event.target,
            event.client_ip,
            event.request_id,
            key.id if key is not None else None,
            event.detail,
        )
        assert digest == chain_hash(prev, canonical, key.material if key is not None else None)
        prev = digest
    assert [seq for seq, _ in appended] == [head.seq + n for n in range(1, 6)]
    stored = await rows(sqlite_stores, "SELECT seq, hash FROM audit_events ORDER BY seq")
    assert [tuple(row) for row in stored] == appended
    new_head = await AuditChain(sqlite_stores.database).head()
    assert (new_head.seq, new_head.hash) == appended[-1]


async def test_a_conflicting_row_fails_the_whole_batch_and_moves_nothing(
    sqlite_stores: Stores,
) -> None:
    """A row already at the next seq (written behind the chain's back): the batch is refused
    as a conflict, none of its rows is inserted and the head stays where it was."""
    chain = AuditChain(sqlite_stores.database)
    try:
        await chain.append([prepared(1)], None)
        head = await chain.head()
        await execute(
            sqlite_stores,
            [
                "INSERT INTO audit_events (seq, ts, kind, outcome, detail, prev_hash, hash) "
                "VALUES (:seq, '2026-01-01 00:00:00.000000', 'x', 'x', '{}', :h, :h)"
            ],
            seq=head.seq + 2,
            h="0" * 64,
        )
        with pytest.raises(StoreConflictError):
            await chain.append([prepared(2), prepared(3)], None)
        after = await chain.head()
    finally:
        await chain.close()
    assert (after.seq, after.hash) == (head.seq, head.hash)
    seqs = await rows(sqlite_stores, "SELECT seq FROM audit_events ORDER BY seq")
    assert [seq for (seq,) in seqs] == [head.seq, head.seq + 2]


async def test_a_missing_head_row_is_a_store_error(sqlite_stores: Stores) -> None:
    await execute(sqlite_stores, ["DELETE FROM bastion_audit_chain"])
    chain = AuditChain(sqlite_stores.database)
    try:
        with pytest.raises(StoreError, match="no head row"):
            await chain.append([prepared(1)], None)
    finally:
        await chain.close()


def test_sqlite_data_errors_are_permanent() -> None:
    assert _is_data_error(sqlite3.DataError("string or blob too big"))
    assert not _is_data_error(sqlite3.OperationalError("database is locked"))
    assert issubclass(AuditDataError, StoreError)


async def test_in_memory_sqlite_appends_through_the_pool() -> None:
    """No file to open a second connection on: the pooled connection is used, and the chain
    it writes verifies."""
    before = len(writer_threads())
    async with started_stores("sqlite+aiosqlite:///:memory:") as stores:
        log = AuditLog(AuditConfig(), stores.database, stores.keys)
        await log.start()
        try:
            for number in range(1, 6):
                await log.emit(sample_event(number))
        finally:
            await log.close()
        report = await audit_store(stores).verify()
        assert report.ok
        assert report.checked == 5
    assert len(writer_threads()) == before


async def test_closing_the_log_stops_the_writer_thread(sqlite_stores: Stores) -> None:
    before = len(writer_threads())
    log = AuditLog(AuditConfig(), sqlite_stores.database, sqlite_stores.keys)
    await log.start()
    await log.emit(sample_event(1))
    assert len(writer_threads()) == before + 1
    await log.close()
    await threads_back_to(before)
    # Started again (as the engine does after a restart), it appends on a new thread.
    await log.start()
    await log.emit(sample_event(2))
    await log.close()
    report = await audit_store(sqlite_stores).verify()
    assert report.ok
    assert report.checked == 2


_EPOCH = datetime(1970, 1, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.integers(min_value=-(10**15), max_value=253_402_300_799_999_999),
        min_size=1,
        max_size=6,
    )
)
def test_sqlite_timestamps_are_sqlalchemys_format_for_any_microsecond(
    micros: list[int],
) -> None:
    """The per-second prefix is remembered: any order of seconds, any side of a boundary."""
    for value in [*micros, *reversed(micros)]:
        expected = (_EPOCH + timedelta(microseconds=value)).isoformat(" ", "microseconds")
        assert _sqlite_timestamp(value) == expected


@pytest.mark.parametrize(
    "value",
    [0, 999_999, 1_000_000, 1_764_000_000_999_999, 1_764_000_001_000_000, -1],
    ids=["epoch", "end-of-first-second", "second-one", "end-of-second", "next-second", "before"],
)
def test_sqlite_timestamps_at_second_boundaries(value: int) -> None:
    expected = (_EPOCH + timedelta(microseconds=value)).isoformat(" ", "microseconds")
    assert _sqlite_timestamp(value) == expected

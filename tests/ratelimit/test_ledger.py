"""The SQL ban ledger: mirror reads, durable writes through outages, propagation between
processes (two ledgers on one database), lifts, retention; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import func, select
from structlog.testing import capture_logs

from bastion.observe.metrics import Metrics
from bastion.ratelimit.core import NO_PENALTY, BanLedger, BanRecord, Penalty
from bastion.ratelimit.ledger import LIFTED, SqlBanLedger, stored_client
from bastion.ratelimit.models import BanRow
from bastion.store.database import Database
from bastion.store.migrate import upgrade

CLIENT = "ip:203.0.113.7"
OTHER = "ip:198.51.100.0/56"


class FakeClock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[Callable[[], Database]]:
    """Started :class:`Database` objects over one migrated database, one per simulated
    process, all closed after the test."""
    opened: list[Database] = []

    def open_database() -> Database:
        database = Database.from_url(database_url)
        opened.append(database)
        return database

    first = open_database()
    await first.start()
    await upgrade(first)
    try:
        yield open_database
    finally:
        for database in opened:
            await database.close()


async def started_database(databases: Callable[[], Database]) -> Database:
    database = databases()
    await database.start()
    return database


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``predicate`` holds: the ledgers' tasks poll and write the database in the
    background, which a slow disk can hold up far beyond the poll interval."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def row_count(database: Database) -> int:
    async with database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(BanRow)) or 0)


def banned(ledger: SqlBanLedger, client: str) -> tuple[float, int]:
    """``(until, level)`` of the client's record in the ledger's mirror."""
    until, level, _ = ledger.penalty(client)
    return until, level


def write_errors(metrics: Metrics) -> float:
    labels = {"store": "database", "op": "ban_write"}
    return metrics.registry.get_sample_value("bastion_store_errors_total", labels) or 0.0


def test_implements_the_ban_ledger_protocol() -> None:
    ledger: BanLedger = SqlBanLedger(Database.from_url("sqlite+aiosqlite:///:memory:"))
    assert ledger.penalty(CLIENT) == NO_PENALTY


async def test_record_reads_from_the_mirror_at_once_and_lands_in_the_database(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    assert banned(ledger, CLIENT) == (clock.now + 60, 1)
    assert banned(ledger, OTHER) == (0.0, 0)
    assert ledger.pending == 1
    assert await ledger.active() == []  # not written yet

    await ledger.flush()
    assert ledger.pending == 0
    assert await ledger.active() == [
        BanRecord(client=CLIENT, until=clock.now + 60, level=1, source="ratelimit")
    ]


async def test_active_lists_only_bans_not_over_longest_first(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    ledger.record(OTHER, until=clock.now + 1800, level=3, source="inspect")
    ledger.record("ip:192.0.2.1", until=clock.now - 5, level=1)
    await ledger.flush()
    active = await ledger.active()
    # A strike block never sets a level.
    assert [(ban.client, ban.level) for ban in active] == [(OTHER, 0), (CLIENT, 1)]
    assert isinstance(active[0], BanRecord)
    assert active[0].source == "inspect"
    # An ended ban is still remembered for its level (the next ban escalates from it).
    assert banned(ledger, "ip:192.0.2.1") == (clock.now - 5, 1)


async def test_lift_removes_the_ban_and_its_level(databases: Callable[[], Database]) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 300, level=2)
    await ledger.flush()

    assert await ledger.lift(CLIENT) is True
    assert banned(ledger, CLIENT) == (0.0, 0)
    assert await ledger.active() == []
    assert await ledger.lift(CLIENT) is False
    assert await ledger.lift("ip:never.banned") is False


async def test_lift_of_a_ban_not_written_yet(databases: Callable[[], Database]) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    assert await ledger.lift(CLIENT) is True
    assert ledger.pending == 0
    await ledger.flush()
    assert await ledger.active() == []


async def test_a_ban_after_a_lift_starts_afresh(databases: Callable[[], Database]) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 1800, level=3)
    await ledger.flush()
    await ledger.lift(CLIENT)
    clock.now += 1
    # Shorter than the lifted ban, yet it replaces the tombstone.
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    await ledger.flush()
    assert [(ban.until, ban.level) for ban in await ledger.active()] == [(clock.now + 60, 1)]


async def test_the_longer_penalty_is_kept_and_only_bans_set_the_level(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    a.record(CLIENT, until=clock.now + 300, level=2)
    a.record(CLIENT, until=clock.now + 60, level=1)  # same process: the mirror keeps 300
    assert banned(a, CLIENT) == (clock.now + 300, 1)  # the latest ban's level
    a.record(CLIENT, until=clock.now + 300, level=2)
    await a.flush()
    b.record(CLIENT, until=clock.now + 60, level=0, source="inspect")
    await b.flush()  # another process, shorter: the stored ban stays
    assert await a.active() == [BanRecord(CLIENT, clock.now + 300, 2, "ratelimit")]

    b.record(CLIENT, until=clock.now + 1800, level=0, source="inspect")
    await b.flush()  # longer: its end and source replace the stored ones, the level stays
    assert await a.active() == [BanRecord(CLIENT, clock.now + 1800, 2, "inspect")]
    await a.refresh()
    assert a.penalty(CLIENT) == Penalty(clock.now + 1800, 2, "inspect")

    a.record(CLIENT, until=clock.now + 600, level=3)
    await a.flush()  # a ban shorter than the block: its level, the block's end and source
    assert await b.active() == [BanRecord(CLIENT, clock.now + 1800, 3, "inspect")]


async def test_a_strike_block_on_a_lifted_record_starts_it_afresh(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    database = await started_database(databases)
    ledger = SqlBanLedger(database, clock=clock)
    ledger.record(CLIENT, until=clock.now + 1800, level=3)
    await ledger.flush()
    assert await ledger.lift(CLIENT) is True
    async with database.session() as session:
        row = await session.get(BanRow, CLIENT)
        assert row is not None
        assert (row.source, row.level) == (LIFTED, 0)
    ledger.record(CLIENT, until=clock.now + 60, level=0, source="inspect")
    await ledger.flush()
    assert await ledger.active() == [BanRecord(CLIENT, clock.now + 60, 0, "inspect")]
    with pytest.raises(ValueError, match="unknown penalty source"):
        ledger.record(CLIENT, until=clock.now + 60, level=1, source=LIFTED)


async def test_two_processes_share_records_and_lifts_through_refresh(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    await a.refresh()
    await b.refresh()

    a.record(CLIENT, until=clock.now + 60, level=1)
    await a.flush()
    clock.now += 1
    await b.refresh()
    assert banned(b, CLIENT) == (clock.now - 1 + 60, 1)

    clock.now += 1
    assert await a.lift(CLIENT) is True
    clock.now += 1
    await b.refresh()
    assert banned(b, CLIENT) == (0.0, 0)

    # A lift by the other process also reaches the one that recorded the ban.
    b.record(OTHER, until=clock.now + 60, level=1)
    await b.flush()
    await a.refresh()
    assert banned(a, OTHER)[1] == 1
    assert await b.lift(OTHER) is True
    await a.refresh()
    assert banned(a, OTHER) == (0.0, 0)


async def test_started_ledgers_propagate_within_the_poll_interval(
    databases: Callable[[], Database],
) -> None:
    a = SqlBanLedger(await started_database(databases), poll_interval=0.05)
    b = SqlBanLedger(await started_database(databases), poll_interval=0.05)
    await a.start()
    await b.start()
    try:
        until = time.time() + 60
        a.record(CLIENT, until=until, level=1)  # written by a's task, read by b's
        await eventually(lambda: banned(b, CLIENT)[1] == 1)
        assert banned(b, CLIENT)[0] == pytest.approx(until, abs=1e-5)
        assert await b.lift(CLIENT) is True
        await eventually(lambda: banned(a, CLIENT) == (0.0, 0))
    finally:
        await a.close()
        await b.close()


async def test_start_loads_bans_recorded_before(databases: Callable[[], Database]) -> None:
    clock = FakeClock()
    earlier = SqlBanLedger(await started_database(databases), clock=clock)
    earlier.record(CLIENT, until=clock.now + 60, level=2)
    await earlier.close()  # flushes

    ledger = SqlBanLedger(await started_database(databases), clock=clock, poll_interval=60)
    await ledger.start()
    try:
        assert banned(ledger, CLIENT) == (clock.now + 60, 2)
    finally:
        await ledger.close()


async def test_bans_recorded_while_the_database_is_down_are_written_when_it_is_back(
    databases: Callable[[], Database],
) -> None:
    database = await started_database(databases)
    metrics = Metrics()
    ledger = SqlBanLedger(database, poll_interval=0.05, metrics=metrics)
    await ledger.start()
    try:
        await database.close()  # the database goes away
        until = time.time() + 60
        with capture_logs() as logs:
            ledger.record(CLIENT, until=until, level=1)
            ledger.record(OTHER, until=until, level=2)
            assert banned(ledger, CLIENT) == (until, 1)  # enforced here meanwhile
            await eventually(lambda: write_errors(metrics) >= 2)  # retried, not dropped
            assert ledger.pending == 2
            await database.start()  # and comes back
            await eventually(lambda: ledger.pending == 0)
        assert [entry["event"] for entry in logs if entry["log_level"] == "error"][:1] == [
            "ban ledger cannot write the database; retrying"
        ]
        assert any(entry["event"] == "ban ledger can write the database again" for entry in logs)
    finally:
        await ledger.close()
    reader = SqlBanLedger(await started_database(databases))
    assert {(ban.client, ban.level) for ban in await reader.active()} == {(CLIENT, 1), (OTHER, 2)}


async def test_close_flushes_queued_bans(databases: Callable[[], Database]) -> None:
    ledger = SqlBanLedger(await started_database(databases), poll_interval=60)
    until = time.time() + 60
    ledger.record(CLIENT, until=until, level=1)  # never started: only close() can write it
    await ledger.close()
    reader = SqlBanLedger(await started_database(databases))
    assert [ban.client for ban in await reader.active()] == [CLIENT]


async def test_close_gives_up_on_a_database_that_stays_down(
    databases: Callable[[], Database],
) -> None:
    database = await started_database(databases)
    ledger = SqlBanLedger(database)
    ledger.record(CLIENT, until=time.time() + 60, level=1)
    await database.close()
    with capture_logs() as logs:
        await ledger.close(flush_timeout=0.2)
    assert ledger.pending == 1
    assert [(entry["event"], entry["bans"]) for entry in logs if "bans" in entry] == [
        ("bans not written before shut-down", 1)
    ]


async def test_a_ban_recorded_during_a_flush_stays_queued(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    flushing = asyncio.create_task(ledger.flush())
    await asyncio.sleep(0)  # the flush has taken its batch
    ledger.record(CLIENT, until=clock.now + 300, level=2)
    await flushing
    assert ledger.pending == 1
    await ledger.flush()
    assert [(ban.until, ban.level) for ban in await ledger.active()] == [(clock.now + 300, 2)]


async def test_a_newer_local_ban_survives_a_refresh_until_written(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    await b.refresh()
    a.record(CLIENT, until=clock.now + 60, level=1)
    await a.flush()
    b.record(CLIENT, until=clock.now + 300, level=2)  # queued, not written
    await b.refresh()
    assert banned(b, CLIENT) == (clock.now + 300, 2)


async def test_bans_ended_longer_than_retention_ago_are_pruned(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    database = await started_database(databases)
    ledger = SqlBanLedger(database, clock=clock, retention=3600)
    ledger.record(CLIENT, until=clock.now + 60, level=1)
    ledger.record(OTHER, until=clock.now + 7 * 86400, level=3)  # long: outlives retention
    await ledger.flush()
    await ledger.refresh()
    assert await row_count(database) == 2

    clock.now += 60 + 3600 + 1
    fresh = SqlBanLedger(database, clock=clock, retention=3600)
    await fresh.refresh()  # a first poll reads everything and prunes
    assert await row_count(database) == 1
    assert banned(fresh, CLIENT) == (0.0, 0)
    assert banned(fresh, OTHER)[1] == 3


async def test_clients_longer_than_the_column_are_stored_by_digest(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    ledger = SqlBanLedger(await started_database(databases), clock=clock)
    client = "header:X-Api-Client:" + "x" * 300
    ledger.record(client, until=clock.now + 60, level=1)
    await ledger.flush()
    assert banned(ledger, client) == (clock.now + 60, 1)
    [ban] = await ledger.active()
    assert ban.client == stored_client(client)
    assert ban.client.startswith("sha256:")
    assert await ledger.lift(client) is True
    assert stored_client(CLIENT) == CLIENT


# -- the level through queued writes: a block never lowers it -----------------------------


async def test_a_ban_and_a_longer_block_queued_together_keep_the_bans_level(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    a.record(CLIENT, until=clock.now - 10, level=1)
    await a.flush()
    # A repeat offence and, before the writer runs, a longer strike block: one queued write
    # with the block's end and source and the ban's level.
    a.record(CLIENT, until=clock.now + 120, level=2)
    a.record(CLIENT, until=clock.now + 900, level=0, source="inspect")
    assert a.penalty(CLIENT) == Penalty(clock.now + 900, 2, "inspect")
    await a.flush()
    assert await b.active() == [BanRecord(CLIENT, clock.now + 900, 2, "inspect")]
    await b.refresh()
    await a.refresh()  # a full read, as every poll is at first
    assert a.penalty(CLIENT) == b.penalty(CLIENT) == Penalty(clock.now + 900, 2, "inspect")


@pytest.mark.parametrize("first", ["ban", "block"])
async def test_a_poll_while_a_block_is_queued_keeps_the_stored_level(
    databases: Callable[[], Database], first: str
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    b.record(CLIENT, until=clock.now - 10, level=2)  # a level-2 ban, just over
    await b.flush()
    await a.refresh()
    assert a.penalty(CLIENT).level == 2
    if first == "block":
        # Blocks queued back to back, each merged with the level the mirror knows.
        a.record(CLIENT, until=clock.now + 5, level=0, source="inspect")
    a.record(CLIENT, until=clock.now + 10, level=0, source="inspect")
    clock.now += 1
    await a.refresh()  # a poll runs before the writer: the row is older than the block
    assert a.penalty(CLIENT) == Penalty(clock.now + 9, 2, "inspect")
    clock.now += 1
    a._watermark = None  # and a full resync
    await a.refresh()
    assert a.penalty(CLIENT).level == 2
    clock.now += 20  # the block is over: the next ban is the third offence
    assert a.penalty(CLIENT).level == 2
    await a.flush()
    await b.refresh()
    assert b.penalty(CLIENT) == Penalty(clock.now - 12, 2, "inspect")


async def test_a_block_queued_on_a_level_another_process_raised_keeps_the_new_level(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock)
    b = SqlBanLedger(await started_database(databases), clock=clock)
    a.record(CLIENT, until=clock.now + 600, level=0, source="inspect")  # queued here
    b.record(CLIENT, until=clock.now + 60, level=3)  # written there first
    await b.flush()
    await a.refresh()
    assert a.penalty(CLIENT) == Penalty(clock.now + 600, 3, "inspect")
    await a.flush()
    assert await b.active() == [BanRecord(CLIENT, clock.now + 600, 3, "inspect")]


async def test_writes_failing_then_recovering_keep_the_level(
    databases: Callable[[], Database],
) -> None:
    database = await started_database(databases)
    metrics = Metrics()
    ledger = SqlBanLedger(database, poll_interval=0.05, metrics=metrics)
    await ledger.start()
    now = float(int(time.time()))  # whole seconds: PostgreSQL keeps microseconds
    try:
        ledger.record(CLIENT, until=now - 10, level=2)
        ledger.record(OTHER, until=now - 10, level=3)
        await ledger.flush()
        await database.close()  # the database goes away
        ledger.record(CLIENT, until=now + 60, level=3)  # a repeat offence, then a block
        ledger.record(CLIENT, until=now + 600, level=0, source="inspect")
        ledger.record(OTHER, until=now + 600, level=0, source="inspect")  # a block alone
        await eventually(lambda: write_errors(metrics) >= 2)  # retried, not dropped
        assert ledger.penalty(CLIENT) == Penalty(now + 600, 3, "inspect")
        assert ledger.penalty(OTHER) == Penalty(now + 600, 3, "inspect")
        await database.start()  # and comes back
        await eventually(lambda: ledger.pending == 0)
        await ledger.refresh()
        assert ledger.penalty(CLIENT) == Penalty(now + 600, 3, "inspect")
        assert ledger.penalty(OTHER) == Penalty(now + 600, 3, "inspect")
    finally:
        await ledger.close()
    reader = SqlBanLedger(await started_database(databases))
    listed = {(ban.client, ban.level, ban.source) for ban in await reader.active()}
    assert listed == {(CLIENT, 3, "inspect"), (OTHER, 3, "inspect")}


async def test_a_block_after_the_retention_forgets_the_old_level(
    databases: Callable[[], Database],
) -> None:
    clock = FakeClock()
    a = SqlBanLedger(await started_database(databases), clock=clock, retention=3600.0)
    b = SqlBanLedger(await started_database(databases), clock=clock, retention=3600.0)
    a.record(CLIENT, until=clock.now, level=2)
    await a.flush()
    await b.refresh()
    clock.now += 7200  # the ban is forgotten, though its row is not pruned yet
    a.record(CLIENT, until=clock.now + 60, level=0, source="inspect")
    b.record(CLIENT, until=clock.now + 30, level=0, source="inspect")
    assert a.penalty(CLIENT) == b.penalty(CLIENT)._replace(until=clock.now + 60)
    assert a.penalty(CLIENT).level == 0
    await a.flush()
    await b.flush()
    assert await a.active() == [BanRecord(CLIENT, clock.now + 60, 0, "inspect")]

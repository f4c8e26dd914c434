"""Reading the log: filters, kind prefixes, time bounds and cursor pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit.chain_harness import sample_event, started_stores
from bastion.audit.config import AuditConfig
from bastion.audit.log import AuditLog
from bastion.audit.query import MAX_LIMIT, decode_cursor, encode_cursor, query_events
from bastion.http.problems import BastionError
from bastion.store.database import Database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """Ten events: odd numbers ``auth.login.failed`` by actors user-0..2, even ``access.denied``."""
    async with started_stores(database_url) as stores:
        log = AuditLog(AuditConfig(), stores.database, stores.keys)
        await log.start()
        try:
            for number in range(1, 11):
                await log.emit(sample_event(number))
            await log.emit(sample_event(11, kind="authz.checked"))
        finally:
            await log.close()
        yield stores.database


async def test_everything_in_seq_order(database: Database) -> None:
    events, cursor = await query_events(database)
    assert [event.seq for event in events] == list(range(1, 12))
    assert cursor is None
    first = events[0].as_dict()
    assert first["detail"] == {"method": "GET", "nested": {"list": [1, "two", None]}, "number": 1}
    assert first["ts"].endswith("+00:00")
    assert set(first) == {
        "seq", "ts", "kind", "outcome", "actor", "target", "client_ip", "request_id",
        "detail", "key_id", "prev_hash", "hash",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "seqs"),
    [
        ("auth.login.failed", [1, 3, 5, 7, 9]),
        ("auth.", [1, 3, 5, 7, 9]),
        ("auth.*", [1, 3, 5, 7, 9]),
        ("auth", []),
        ("access.denied", [2, 4, 6, 8, 10]),
        ("authz.", [11]),
        ("%", []),
        ("auth_login.", []),
    ],
)
async def test_kind_exact_or_prefix(database: Database, kind: str, seqs: list[int]) -> None:
    events, _ = await query_events(database, kind=kind)
    assert [event.seq for event in events] == seqs


async def test_actor_and_combined_filters(database: Database) -> None:
    events, _ = await query_events(database, actor="user-1")
    assert [event.seq for event in events] == [1, 4, 7, 10]
    events, _ = await query_events(database, actor="user-1", kind="auth.")
    assert [event.seq for event in events] == [1, 7]


async def test_time_bounds(database: Database) -> None:
    events, _ = await query_events(database)
    fifth = events[4].ts
    since, _ = await query_events(database, since=fifth)
    assert since[0].seq == 5
    until, _ = await query_events(database, until=fifth)
    assert until[-1].seq == 4
    future, _ = await query_events(database, since=datetime.now(UTC) + timedelta(days=1))
    assert future == []


async def test_cursor_pages_cover_everything_once(database: Database) -> None:
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        events, cursor = await query_events(database, limit=3, cursor=cursor)
        seen.extend(event.seq for event in events)
        pages += 1
        if cursor is None:
            break
    assert (seen, pages) == (list(range(1, 12)), 4)
    kind_page, kind_cursor = await query_events(database, kind="auth.", limit=2)
    assert [event.seq for event in kind_page] == [1, 3]
    rest, _ = await query_events(database, kind="auth.", cursor=kind_cursor)
    assert [event.seq for event in rest] == [5, 7, 9]


@pytest.mark.parametrize(
    "cursor", ["", "not base64!", "c2VxOg", encode_cursor(5)[:-2], "c2VxOi0x", "eHh4OjU"]
)
async def test_invalid_cursors_are_bad_requests(database: Database, cursor: str) -> None:
    with pytest.raises(BastionError) as refused:
        await query_events(database, cursor=cursor)
    assert (refused.value.code, refused.value.status) == ("bad_request", 400)


@pytest.mark.parametrize("limit", [0, -1, MAX_LIMIT + 1])
async def test_limits_out_of_range_are_bad_requests(database: Database, limit: int) -> None:
    with pytest.raises(BastionError) as refused:
        await query_events(database, limit=limit)
    assert refused.value.code == "bad_request"


async def test_naive_times_are_bad_requests(database: Database) -> None:
    with pytest.raises(BastionError) as refused:
        await query_events(database, since=datetime(2026, 1, 1))
    assert refused.value.code == "bad_request"


def test_cursors_round_trip() -> None:
    for seq in (0, 1, 2**62):
        assert decode_cursor(encode_cursor(seq)) == seq
    with pytest.raises(BastionError):
        decode_cursor(encode_cursor(2**63))


async def test_events_written_concurrently_are_all_found(tmp_path: Path) -> None:
    async with started_stores(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}") as stores:
        log = AuditLog(AuditConfig(), stores.database, stores.keys)
        await log.start()
        try:
            await asyncio.gather(*(log.emit(sample_event(n)) for n in range(50)))
        finally:
            await log.close()
        events, cursor = await query_events(stores.database, limit=MAX_LIMIT)
    assert ([event.seq for event in events], cursor) == (list(range(1, 51)), None)

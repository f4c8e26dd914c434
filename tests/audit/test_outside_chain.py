"""Rows outside the chain (at or below the pruning checkpoint, at ``seq`` 0 or less, past the
head) are reported by verification and never served by the readers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from audit.chain_harness import audit_store, execute, fill, started_stores
from bastion.audit.config import AuditConfig
from bastion.audit.query import query_events
from bastion.audit.reader import AuditFilter, AuditReader
from bastion.store.stores import Stores

FORGE = (
    "INSERT INTO audit_events (seq, ts, kind, outcome, actor, target, client_ip, request_id,"
    " detail, key_id, prev_hash, hash) VALUES (:seq, '2026-01-01 00:00:00.000000',"
    " 'admin.user.disabled', 'success', 'mallory', 'bob', NULL, NULL, '{}', NULL, :z, :z)"
)
ZEROS = "0" * 64


async def served(stores: Stores) -> dict[str, list[int]]:
    """The ``seq`` of every event each reader serves."""
    reader = AuditReader(stores.database)
    page = await reader.page(AuditFilter(limit=100))
    streamed = [event async for event in reader.stream(AuditFilter())]
    queried, _ = await query_events(stores.database, limit=100)
    return {
        "page": sorted(event["seq"] for event in page.events),
        "stream": [event["seq"] for event in streamed],
        "query": [event.seq for event in queried],
    }


@pytest.mark.parametrize("seq", [0, -1])
async def test_a_row_at_seq_zero_or_below_is_refused_by_the_schema(
    database_url: str, seq: int
) -> None:
    async with started_stores(database_url) as stores:
        await fill(stores, 2)
        with pytest.raises(IntegrityError):
            await execute(stores, [FORGE], seq=seq, z=ZEROS)


@pytest.mark.parametrize("forged", [1, 3, 5])
async def test_a_row_forged_below_the_checkpoint_fails_verify_and_is_not_served(
    database_url: str, forged: int
) -> None:
    async with started_stores(database_url) as stores:
        config = AuditConfig(retention=60)
        await fill(stores, 5, config)
        store = audit_store(stores, config)
        assert await store.prune(now=datetime.now(UTC) + timedelta(days=1)) == 5
        await fill(stores, 2, config, start=6)
        await execute(stores, [FORGE], seq=forged, z=ZEROS)
        report = await store.verify()
        assert not report.ok
        assert report.reason == "outside_chain"
        assert report.first_bad_seq == forged
        assert report.anchor_seq == 5
        assert await served(stores) == {"page": [6, 7], "stream": [6, 7], "query": [6, 7]}


async def test_a_row_forged_past_the_head_fails_verify_and_is_not_served(
    database_url: str,
) -> None:
    async with started_stores(database_url) as stores:
        await fill(stores, 3)
        await execute(stores, [FORGE], seq=9, z=ZEROS)
        report = await audit_store(stores).verify()
        assert not report.ok
        assert report.reason == "outside_chain"
        assert report.first_bad_seq == 9
        assert await served(stores) == {"page": [1, 2, 3], "stream": [1, 2, 3], "query": [1, 2, 3]}


async def test_an_intact_pruned_chain_still_verifies(database_url: str) -> None:
    async with started_stores(database_url) as stores:
        config = AuditConfig(retention=60)
        await fill(stores, 4, config)
        store = audit_store(stores, config)
        assert await store.prune(now=datetime.now(UTC) + timedelta(days=1)) == 4
        await fill(stores, 3, config, start=5)
        report = await store.verify()
        assert report.ok, report
        assert report.checked == 3
        assert await served(stores) == {"page": [5, 6, 7], "stream": [5, 6, 7], "query": [5, 6, 7]}

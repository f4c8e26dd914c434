"""The durable log: group commit, durability before acknowledgement, back-pressure, retries,
shut-down, key rotation, metrics and pruning with a checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from audit.chain_harness import audit_store, execute, rows, sample_event, started_stores
from bastion.audit.chain import PreparedEvent, SigningKey
from bastion.audit.config import AuditConfig
from bastion.audit.log import AuditLog
from bastion.audit.query import query_events
from bastion.audit.verify import verify_chain
from bastion.http.problems import BastionError
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError
from bastion.store.stores import Stores


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with started_stores(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}") as stores:
        yield stores


class ControlledAppend:
    """Wraps :meth:`AuditChain.append`: records batch sizes, can hold commits behind a gate
    and make the next ``failures`` attempts fail like a database outage."""

    def __init__(self, log: AuditLog) -> None:
        self._append = log.chain.append
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.attempts = 0
        log.chain.append = self  # type: ignore[method-assign]

    async def __call__(
        self, events: Sequence[PreparedEvent], key: SigningKey | None
    ) -> list[tuple[int, str]]:
        self.attempts += 1
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise StoreError("audit append: ConnectionRefusedError")
        result = await self._append(events, key)
        self.batches.append(len(events))
        return result


async def count(stores: Stores) -> int:
    return int((await rows(stores, "SELECT count(*) FROM audit_events"))[0][0])


async def started(stores: Stores, config: AuditConfig, **kwargs: Any) -> AuditLog:
    log = AuditLog(config, stores.database, stores.keys, **kwargs)
    await log.start()
    return log


async def test_an_event_is_committed_when_emit_returns(database_url: str) -> None:
    async with started_stores(database_url) as stores:
        log = await started(stores, AuditConfig())
        try:
            await log.emit(sample_event(1))
            # Read through another connection while the writer is still running.
            events, _ = await query_events(stores.database)
            assert [(event.seq, event.kind) for event in events] == [(1, "auth.login.failed")]
        finally:
            await log.close()


async def test_concurrent_emits_share_transactions(database_url: str) -> None:
    async with started_stores(database_url) as stores:
        log = await started(stores, AuditConfig(batch_size=50))
        append = ControlledAppend(log)
        try:
            await asyncio.gather(*(log.emit(sample_event(n)) for n in range(1, 301)))
        finally:
            await log.close()
        assert sum(append.batches) == 300
        assert len(append.batches) < 300
        assert max(append.batches) <= 50
        seqs = [row[0] for row in await rows(stores, "SELECT seq FROM audit_events ORDER BY seq")]
        assert seqs == list(range(1, 301))
        report = await audit_store(stores).verify()
        assert (report.ok, report.checked) == (True, 300)


async def test_loss_window_acknowledges_at_once_and_commits_later(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(loss_window=30.0, commit_timeout=60.0))
    try:
        for number in range(5):
            await log.emit(sample_event(number))
        assert log.queued == 5
        assert await count(sqlite_stores) == 0
        await log.flush()
        assert (log.queued, await count(sqlite_stores)) == (0, 5)
        await log.emit(sample_event(6))
    finally:
        await log.close()
    # Shut-down commits what was only acknowledged.
    assert await count(sqlite_stores) == 6


async def test_a_full_queue_sheds_visibly_and_drops_nothing(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(queue_size=2, on_full="shed"))
    append = ControlledAppend(log)
    append.gate.clear()
    try:
        waiting = [asyncio.create_task(log.emit(sample_event(n))) for n in (1, 2)]
        await asyncio.sleep(0)
        while append.attempts == 0:
            await asyncio.sleep(0.001)
        with pytest.raises(BastionError) as refused:
            await log.emit(sample_event(3))
        assert (refused.value.code, refused.value.status) == ("overloaded", 503)
        assert refused.value.headers["Retry-After"] == "1"
        append.gate.set()
        await asyncio.gather(*waiting)
    finally:
        await log.close()
    assert await count(sqlite_stores) == 2


async def test_a_full_queue_makes_emit_wait_for_room(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(queue_size=2, on_full="wait"))
    append = ControlledAppend(log)
    append.gate.clear()
    try:
        first = [asyncio.create_task(log.emit(sample_event(n))) for n in (1, 2)]
        while append.attempts == 0:
            await asyncio.sleep(0.001)
        third = asyncio.create_task(log.emit(sample_event(3)))
        await asyncio.sleep(0.01)
        assert not third.done()
        assert log.queued == 2
        append.gate.set()
        await asyncio.gather(*first, third)
    finally:
        await log.close()
    assert await count(sqlite_stores) == 3


async def test_waiting_for_room_is_bounded_by_the_commit_timeout(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(queue_size=1, commit_timeout=0.05))
    append = ControlledAppend(log)
    append.gate.clear()
    try:
        held = asyncio.create_task(log.emit(sample_event(1)))
        with pytest.raises(BastionError) as refused:
            await log.emit(sample_event(2))
        assert refused.value.code == "overloaded"
        with pytest.raises(BastionError):
            await held
        append.gate.set()
        await log.flush()
    finally:
        await log.close()
    # The held event timed out for its caller but was still committed; the refused one never
    # entered the queue.
    assert await count(sqlite_stores) == 1


async def test_a_failed_commit_is_retried_and_callers_wait_for_it(sqlite_stores: Stores) -> None:
    metrics = Metrics()
    log = await started(sqlite_stores, AuditConfig(), metrics=metrics)
    append = ControlledAppend(log)
    append.failures = 2
    try:
        await log.emit(sample_event(1))
        assert append.attempts == 3
        assert await count(sqlite_stores) == 1
    finally:
        await log.close()
    errors = metrics.registry.get_sample_value(
        "bastion_store_errors_total", {"store": "audit", "op": "append"}
    )
    assert errors == 2


async def test_an_outage_longer_than_the_timeout_fails_the_request_not_the_event(
    sqlite_stores: Stores,
) -> None:
    log = await started(sqlite_stores, AuditConfig(commit_timeout=0.05))
    append = ControlledAppend(log)
    append.failures = 1_000_000
    try:
        with pytest.raises(BastionError) as refused:
            await log.emit(sample_event(1))
        assert refused.value.code == "overloaded"
        assert await count(sqlite_stores) == 0
        append.failures = 0
        await log.flush()
        assert await count(sqlite_stores) == 1
    finally:
        await log.close()


async def test_close_reports_events_it_cannot_commit(
    sqlite_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bastion.audit.log._CLOSE_PATIENCE", 0.0)
    log = await started(sqlite_stores, AuditConfig(loss_window=30.0, commit_timeout=60.0))
    append = ControlledAppend(log)
    append.failures = 1_000_000
    await log.emit(sample_event(1))
    with capture_logs() as logs:
        await log.close()
    lost = [entry for entry in logs if entry["log_level"] == "error"]
    assert lost[0]["events"] == 1
    assert lost[0]["kinds"] == ["auth.login.failed"]
    assert log.queued == 0


async def test_emit_on_a_log_that_is_not_running_fails_visibly(sqlite_stores: Stores) -> None:
    log = AuditLog(AuditConfig(), sqlite_stores.database, sqlite_stores.keys)
    with pytest.raises(BastionError) as refused:
        await log.emit(sample_event(1))
    assert refused.value.code == "overloaded"
    await log.start()
    await log.close()
    with pytest.raises(BastionError):
        await log.emit(sample_event(2))


async def test_committed_events_are_counted_by_kind(sqlite_stores: Stores) -> None:
    metrics = Metrics()
    log = await started(sqlite_stores, AuditConfig(), metrics=metrics)
    try:
        await asyncio.gather(*(log.emit(sample_event(n)) for n in range(1, 6)))
    finally:
        await log.close()

    def value(kind: str) -> float | None:
        return metrics.registry.get_sample_value("bastion_audit_events_total", {"kind": kind})

    assert (value("auth.login.failed"), value("access.denied")) == (3, 2)


async def test_log_events_writes_a_line_with_seq_and_hash(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(log_events=True))
    try:
        with capture_logs() as logs:
            await log.emit(sample_event(1, detail={"password": "hunter2"}))
    finally:
        await log.close()
    (line,) = [entry for entry in logs if entry["event"] == "audit"]
    (event,), _ = await query_events(sqlite_stores.database)
    assert (line["seq"], line["hash"], line["kind"]) == (1, event.hash, "auth.login.failed")
    assert "hunter2" not in str(line)


async def test_a_rotation_elsewhere_is_picked_up_by_the_writer(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig(key_refresh=0.001))
    try:
        await log.emit(sample_event(1))
        rotated = await audit_store(sqlite_stores).rotate_key()
        await asyncio.sleep(0.002)
        await log.emit(sample_event(2))
    finally:
        await log.close()
    key_ids = [
        row[0] for row in await rows(sqlite_stores, "SELECT key_id FROM audit_events ORDER BY seq")
    ]
    # 1: before; 2: the rotation's own event; 3: this writer's next event, with the new key.
    assert key_ids[2] == key_ids[1] == rotated != key_ids[0]
    assert (await audit_store(sqlite_stores).verify()).ok


async def test_without_hmac_rows_carry_no_key(sqlite_stores: Stores) -> None:
    config = AuditConfig(hmac=False)
    log = await started(sqlite_stores, config)
    try:
        await log.emit(sample_event(1))
    finally:
        await log.close()
    assert await rows(sqlite_stores, "SELECT key_id FROM audit_events") == [(None,)]
    assert (await audit_store(sqlite_stores, config).verify()).ok


@pytest.mark.parametrize("use_hmac", [True, False], ids=["hmac", "sha256"])
async def test_pruning_leaves_a_checkpoint_verify_starts_from(
    database_url: str, use_hmac: bool
) -> None:
    config = AuditConfig(retention=86400.0, hmac=use_hmac)
    async with started_stores(database_url) as stores:
        log = await started(stores, config)
        try:
            for number in range(1, 7):
                await log.emit(sample_event(number))
            await asyncio.sleep(0.002)
            middle = datetime.now(UTC)
            await asyncio.sleep(0.002)
            for number in range(7, 11):
                await log.emit(sample_event(number))
            assert await log.prune(now=middle - timedelta(seconds=1)) == 0
            assert await log.prune(now=middle + timedelta(days=1)) == 6
        finally:
            await log.close()
        store = audit_store(stores, config)
        head = await store.head()
        assert (head.anchor_seq, head.seq) == (6, 10)
        assert (head.anchor_mac is not None) is use_hmac
        report = await store.verify()
        assert (report.ok, report.checked, report.anchor_seq) == (True, 4, 6)
        await execute(stores, ["DELETE FROM audit_events WHERE seq = 7"])
        gap = await store.verify()
        assert (gap.first_bad_seq, gap.reason) == (7, "gap")


async def test_a_moved_checkpoint_is_found(sqlite_stores: Stores) -> None:
    config = AuditConfig(retention=1.0)
    log = await started(sqlite_stores, config)
    try:
        for number in range(1, 6):
            await log.emit(sample_event(number))
        assert await log.prune(now=datetime.now(UTC) + timedelta(days=1)) == 5
        for number in range(6, 9):
            await log.emit(sample_event(number))
    finally:
        await log.close()
    store = audit_store(sqlite_stores, config)
    assert (await store.verify()).ok
    # Hiding events 6 and 7 by moving the checkpoint past them needs the key.
    await execute(
        sqlite_stores,
        [
            "DELETE FROM audit_events WHERE seq <= 7",
            "UPDATE bastion_audit_chain SET anchor_seq = 7, anchor_hash = "
            "(SELECT prev_hash FROM audit_events WHERE seq = 8)",
        ],
    )
    report = await store.verify()
    assert (report.first_bad_seq, report.reason) == (8, "anchor_invalid")


async def test_pruning_in_chunks_and_from_the_store(sqlite_stores: Stores) -> None:
    config = AuditConfig(retention=60.0)
    log = await started(sqlite_stores, config)
    try:
        await asyncio.gather(*(log.emit(sample_event(n)) for n in range(1, 26)))
        later = datetime.now(UTC) + timedelta(hours=1)
        key = log.keyring.signing
        assert await log.chain.prune(later - timedelta(seconds=60), key, chunk=4) == 25
    finally:
        await log.close()
    store = audit_store(sqlite_stores, config)
    assert await store.prune(now=later) == 0
    assert (await store.head()).anchor_seq == 25
    report = await store.verify()
    assert (report.ok, report.checked, report.head_seq) == (True, 0, 25)
    assert await audit_store(sqlite_stores, AuditConfig()).prune() == 0


async def test_verify_follows_a_prune_made_while_it_walks(sqlite_stores: Stores) -> None:
    config = AuditConfig(retention=60.0)
    log = await started(sqlite_stores, config)
    try:
        for number in range(1, 11):
            await log.emit(sample_event(number))
        store = audit_store(sqlite_stores, config)
        pruned: list[int] = []

        async def lookup_then_prune(key_id: str) -> bytes | None:
            # Called for the first row: another process prunes events 1-6 meanwhile.
            key = await store.keyring.lookup(key_id)
            events, _ = await query_events(sqlite_stores.database, limit=7)
            cutoff = events[6].ts
            pruned.append(await log.chain.prune(cutoff, log.keyring.signing))
            return key

        report = await verify_chain(
            sqlite_stores.database, lookup_then_prune, require_hmac=True, page_size=2
        )
    finally:
        await log.close()
    assert pruned == [6]
    # Rows 1 and 2 were read before the prune, 7 to 10 after it.
    assert (report.ok, report.checked, report.anchor_seq, report.head_seq) == (True, 6, 6, 10)


async def test_a_cancelled_request_leaves_its_batch_mates_waiting(sqlite_stores: Stores) -> None:
    log = await started(sqlite_stores, AuditConfig())
    append = ControlledAppend(log)
    append.gate.clear()
    try:
        first = asyncio.create_task(log.emit(sample_event(1)))
        second = asyncio.create_task(log.emit(sample_event(2)))
        while append.attempts == 0:
            await asyncio.sleep(0.001)
        first.cancel()  # e.g. its client went away
        append.gate.set()
        await second
        assert first.cancelled()
    finally:
        await log.close()
    # The cancelled request's event was already queued: it is still recorded.
    assert await count(sqlite_stores) == 2


async def test_close_gives_up_on_every_batch_once_the_patience_is_spent(
    sqlite_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bastion.audit.log._CLOSE_PATIENCE", 0.0)
    log = await started(
        sqlite_stores, AuditConfig(loss_window=30.0, commit_timeout=60.0, batch_size=1)
    )
    append = ControlledAppend(log)
    append.failures = 1_000_000
    for number in range(3):
        await log.emit(sample_event(number))
    with capture_logs() as logs:
        await log.close()
    lost = [entry["events"] for entry in logs if entry["log_level"] == "error"]
    # One attempt per batch: the first failure at shut-down spends the patience for all.
    assert (lost, append.attempts, log.queued) == ([1, 1, 1], 3, 0)


async def test_a_request_waiting_for_room_fails_when_the_log_closes(sqlite_stores: Stores) -> None:
    log = await started(
        sqlite_stores, AuditConfig(queue_size=1, loss_window=30.0, commit_timeout=60.0)
    )
    append = ControlledAppend(log)
    append.gate.clear()
    await log.emit(sample_event(1))
    waiting = asyncio.create_task(log.emit(sample_event(2)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    closing = asyncio.create_task(log.close())
    append.gate.set()
    await closing
    with pytest.raises(BastionError) as refused:
        await waiting
    assert refused.value.code == "overloaded"
    assert await count(sqlite_stores) == 1


async def test_the_pruner_runs_every_prune_interval(sqlite_stores: Stores) -> None:
    config = AuditConfig(retention=0.001, prune_interval=0.01)
    log = await started(sqlite_stores, config)
    try:
        for number in range(1, 4):
            await log.emit(sample_event(number))
        store = audit_store(sqlite_stores, config)
        for _ in range(1000):  # bounded: a pruner that never runs fails the test
            if (await store.head()).anchor_seq == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await log.close()
    assert await count(sqlite_stores) == 0
    report = await audit_store(sqlite_stores, config).verify()
    assert (report.ok, report.anchor_seq, report.head_seq) == (True, 3, 3)


async def test_two_writers_taking_turns_keep_one_chain(database_url: str) -> None:
    """Each writer's next append expects the head it wrote last; the other one moved it, so the
    append falls back to locking the head and chaining after what is really there."""
    async with started_stores(database_url) as stores:
        first = await started(stores, AuditConfig())
        second = await started(stores, AuditConfig())
        outcomes: list[bool] = []
        for log in (first, second):
            one_statement = log.chain._append_at

            async def spy(*args: Any, _call: Any = one_statement) -> bool:
                outcomes.append(await _call(*args))
                return bool(outcomes[-1])

            log.chain._append_at = spy  # type: ignore[method-assign]
        try:
            for number in range(1, 11):
                await (first if number % 2 else second).emit(sample_event(number))
            await asyncio.gather(*(first.emit(sample_event(n)) for n in range(11, 21)))
            await first.emit(sample_event(21))
        finally:
            await first.close()
            await second.close()
        numbers = await rows(stores, "SELECT seq, request_id FROM audit_events ORDER BY seq")
        report = await audit_store(stores).verify()
    assert [seq for seq, _ in numbers] == list(range(1, 22))
    assert [request_id for _, request_id in numbers][:10] == [f"req-{n}" for n in range(1, 11)]
    assert (report.ok, report.checked) == (True, 21)
    if stores.database.dialect == "postgresql":
        # Taking turns (events 3-10, then the batch of 11-20 after the second writer's event
        # 10), every optimistic append found the head moved; alone (event 21), it held.
        assert outcomes == [False] * 9 + [True]
    else:
        assert outcomes == []


async def emit_after_turns(log: AuditLog, turns: int, number: int) -> None:
    """A request that reaches its ``emit()`` ``turns`` event-loop turns from now."""
    for _ in range(turns):
        await asyncio.sleep(0)
    await log.emit(sample_event(number))


async def test_events_emitted_in_the_next_loop_turns_share_the_commit(
    sqlite_stores: Stores,
) -> None:
    """With ``max_wait = 0`` the writer gives a growing batch a few more loop turns: requests
    the loop was about to run join it instead of each starting a transaction of its own."""
    log = await started(sqlite_stores, AuditConfig())
    append = ControlledAppend(log)
    try:
        await asyncio.gather(*(emit_after_turns(log, turns, turns + 1) for turns in range(4)))
    finally:
        await log.close()
    assert append.batches == [4]
    assert (await audit_store(sqlite_stores).verify()).checked == 4


async def test_a_steady_stream_never_holds_a_commit_back(sqlite_stores: Stores) -> None:
    """One new event every loop turn, for longer than any batch: the writer still starts its
    commit after a few turns, and every event is committed once."""
    log = await started(sqlite_stores, AuditConfig())
    append = ControlledAppend(log)
    emits: list[asyncio.Future[None]] = []
    try:
        for number in range(1, 201):
            emits.append(asyncio.ensure_future(log.emit(sample_event(number))))
            await asyncio.sleep(0)
            if number == 100:
                # Half-way through the stream, the first commit has long started.
                assert append.attempts >= 1
        await asyncio.gather(*emits)
    finally:
        await log.close()
    assert 2 <= append.batches[0] <= 10
    assert sum(append.batches) == 200
    seqs = [row[0] for row in await rows(sqlite_stores, "SELECT seq FROM audit_events")]
    assert sorted(seqs) == list(range(1, 201))


@pytest.mark.parametrize("hurry", ["flush", "full-batch"], ids=["a-flush", "a-full-batch"])
async def test_nothing_waits_for_more_events_once_asked_to_hurry(
    sqlite_stores: Stores, hurry: str
) -> None:
    """A flush, or a batch that is already full, is committed without giving the loop turns
    for more: the events emitted in those turns go to the next transaction."""
    log = await started(sqlite_stores, AuditConfig(batch_size=2 if hurry == "full-batch" else 500))
    append = ControlledAppend(log)
    try:
        first = [asyncio.ensure_future(log.emit(sample_event(n))) for n in (1, 2)]
        if hurry == "flush":
            flushing = asyncio.ensure_future(log.flush())
        else:
            first.append(asyncio.ensure_future(log.emit(sample_event(3))))
        late = asyncio.ensure_future(emit_after_turns(log, 1, 4))
        await asyncio.gather(*first, late)
        if hurry == "flush":
            await flushing
    finally:
        await log.close()
    assert append.batches[0] == 2
    assert sum(append.batches) == (3 if hurry == "flush" else 4)

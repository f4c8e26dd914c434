"""The durable log under faults: values a database refuses, a writer that fails, a shut-down
that cannot commit. None of them may freeze the log, drop an event silently or leave a caller
without an answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from audit.chain_harness import audit_store, execute, rows, sample_event, started_stores
from bastion.audit.chain import AuditDataError, PreparedEvent, SigningKey, _is_data_error
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import REJECTED_KIND, AuditLog
from bastion.audit.query import query_events
from bastion.http.problems import BastionError
from bastion.observe.metrics import Metrics
from bastion.store.stores import Stores


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with started_stores(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}") as stores:
        yield stores


async def started(stores: Stores, config: AuditConfig, **kwargs: Any) -> AuditLog:
    log = AuditLog(config, stores.database, stores.keys, **kwargs)
    await log.start()
    return log


def append_errors(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "bastion_store_errors_total", {"store": "audit", "op": "append"}
    )
    return value or 0.0


UNSTORABLE = "\x00\x01\x1b[31m\n\r\x7f\x85\u2028\udcff"
ESCAPED = "\\x00\\x01\\x1b[31m\\x0a\\x0d\\x7f\\x85\\u2028\\udcff"


async def test_control_characters_in_every_column_are_stored_escaped(database_url: str) -> None:
    """A NUL (``/admin%00.php``) is refused by PostgreSQL in text, and a lone surrogate cannot
    be encoded at all: both are escaped in every column, so the event commits everywhere and
    verifies, and the events after it are not held up."""
    async with started_stores(database_url) as stores:
        log = await started(stores, AuditConfig(commit_timeout=5.0))
        try:
            await log.emit(
                AuditEvent(
                    kind="auth.login.failed" + UNSTORABLE,
                    outcome="fail" + UNSTORABLE[:3],
                    actor="bob" + UNSTORABLE,
                    target="/admin" + UNSTORABLE + ".php",
                    client_ip="203.0.113.7" + UNSTORABLE,
                    request_id="req" + UNSTORABLE,
                    detail={"path" + UNSTORABLE: "/admin" + UNSTORABLE, "short": "\x00"},
                )
            )
            await log.emit(sample_event(2))
        finally:
            await log.close()
        events, _ = await query_events(stores.database)
        report = await audit_store(stores).verify()
    assert report.ok, report
    assert log.queued == 0
    first, second = events
    assert first.target == "/admin" + ESCAPED + ".php"
    assert first.actor == "bob" + ESCAPED
    assert first.client_ip == ("203.0.113.7" + ESCAPED)[:64]
    assert first.request_id == "req" + ESCAPED
    assert first.kind == ("auth.login.failed" + ESCAPED)[:64]
    assert first.outcome == "fail\\x00\\x01\\x1b"[:16]
    assert first.detail == {"path" + ESCAPED: "/admin" + ESCAPED, "short": "\\x00"}
    assert second.target == "/api/orders/2"


class RawPrepare:
    """Skips the escaping of ``_prepare`` for targets carrying a marker, so the database itself
    sees a value it refuses: the last line of defence when a value slips past the escaping."""

    def __init__(self, log: AuditLog) -> None:
        self._prepare = log._prepare
        log._prepare = self  # type: ignore[method-assign]

    def __call__(self, event: AuditEvent) -> PreparedEvent:
        prepared = self._prepare(event)
        if event.target is not None and "\x00" in event.target:
            return prepared._replace(target=event.target)
        return prepared


async def emit_many(log: AuditLog, events: Sequence[AuditEvent]) -> None:
    await asyncio.gather(*(log.emit(event) for event in events))


@pytest.mark.postgres
async def test_a_value_postgresql_refuses_becomes_a_marker_and_blocks_nothing(
    postgres_database_url: str,
) -> None:
    async with started_stores(postgres_database_url) as stores:
        metrics = Metrics()
        log = await started(stores, AuditConfig(max_wait=0.05), metrics=metrics)
        RawPrepare(log)
        try:
            events = [sample_event(n) for n in range(1, 8)]
            events[3] = sample_event(4, target="/admin\x00.php")
            with capture_logs() as logs:
                await emit_many(log, events)
            await log.emit(sample_event(8))
        finally:
            await log.close()
        stored, _ = await query_events(stores.database)
        report = await audit_store(stores).verify()
    assert report.ok, report
    assert log.queued == 0
    assert [event.kind for event in stored] == [
        *(event.kind for event in events[:3]),
        REJECTED_KIND,
        *(event.kind for event in events[4:]),
        sample_event(8).kind,
    ]
    marker = stored[3]
    assert marker.target is None
    assert marker.actor is None
    assert marker.detail["kind"] == events[3].kind
    assert marker.detail["request_id"] == "req-4"
    assert marker.detail["error"]
    assert append_errors(metrics) >= 1
    assert any(entry["log_level"] == "error" for entry in logs)


class RefusingAppend:
    """Wraps :meth:`AuditChain.append`: a batch holding a target with ``poison`` is refused like
    a PostgreSQL data error; every attempt is recorded."""

    def __init__(self, log: AuditLog) -> None:
        self._append = log.chain.append
        self.attempts: list[int] = []
        log.chain.append = self  # type: ignore[method-assign]

    async def __call__(
        self, events: Sequence[PreparedEvent], key: SigningKey | None
    ) -> list[tuple[int, str]]:
        self.attempts.append(len(events))
        if any(event.target and "poison" in event.target for event in events):
            raise AuditDataError("audit append: DataError: invalid byte sequence")
        return await self._append(events, key)


async def test_a_refused_batch_is_split_until_the_refused_event_is_alone(
    sqlite_stores: Stores,
) -> None:
    log = await started(sqlite_stores, AuditConfig(max_wait=0.2))
    refusing = RefusingAppend(log)
    events = [sample_event(n) for n in range(1, 9)]
    events[5] = sample_event(6, target="/poison")
    try:
        await emit_many(log, events)
    finally:
        await log.close()
    stored, _ = await query_events(sqlite_stores.database)
    assert refusing.attempts[0] == 8  # one batch first
    assert len(refusing.attempts) <= 1 + 2 * 3 + 1  # halves down to the one event, then its marker
    assert [event.kind for event in stored] == [
        *(event.kind for event in events[:5]),
        REJECTED_KIND,
        *(event.kind for event in events[6:]),
    ]
    assert [event.request_id for event in stored if event.kind != REJECTED_KIND] == [
        f"req-{n}" for n in (1, 2, 3, 4, 5, 7, 8)
    ]
    assert (await audit_store(sqlite_stores).verify()).ok


async def test_a_refused_marker_is_reported_and_never_retried_forever(
    sqlite_stores: Stores,
) -> None:
    log = await started(sqlite_stores, AuditConfig())
    refusing = RefusingAppend(log)
    original = log._reject

    def poisoned_marker(event: PreparedEvent, error: AuditDataError) -> PreparedEvent:
        return original(event, error)._replace(target="/poison-too")

    log._reject = poisoned_marker  # type: ignore[method-assign]
    try:
        with capture_logs() as logs:
            await log.emit(sample_event(1, target="/poison"))
        await log.emit(sample_event(2))
    finally:
        await log.close()
    stored, _ = await query_events(sqlite_stores.database)
    assert [event.request_id for event in stored] == ["req-2"]
    assert refusing.attempts == [1, 1, 1]
    assert "audit marker refused by the database" in [entry["event"] for entry in logs]


async def test_a_failing_writer_is_restarted_and_its_callers_answered(
    sqlite_stores: Stores,
) -> None:
    """A writer that fails (a defect, not a database error) is restarted; the callers waiting on
    it get 503 at once rather than at their timeout, and their events are still committed."""
    metrics = Metrics()
    log = await started(sqlite_stores, AuditConfig(commit_timeout=30.0), metrics=metrics)
    commit = log._commit
    failures = [RuntimeError("writer defect")]

    async def failing_commit(batch: Any) -> None:
        if failures:
            raise failures.pop()
        await commit(batch)

    log._commit = failing_commit  # type: ignore[method-assign]
    first_writer = log._writer
    try:
        with capture_logs() as logs:
            with pytest.raises(BastionError) as raised:
                await asyncio.wait_for(log.emit(sample_event(1)), timeout=10)
            await log.flush()
        assert raised.value.code == "overloaded"
        assert log._writer is not first_writer
        assert not log._writer.done()
        assert "audit writer failed; restarting it" in [entry["event"] for entry in logs]
        await log.emit(sample_event(2))
    finally:
        await log.close()
    stored, _ = await query_events(sqlite_stores.database)
    assert [event.request_id for event in stored] == ["req-1", "req-2"]
    assert append_errors(metrics) == 1
    assert log.queued == 0


async def test_close_abandons_what_a_failed_writer_left_behind_loudly(
    sqlite_stores: Stores,
) -> None:
    log = await started(sqlite_stores, AuditConfig(loss_window=1.0))

    async def broken_commit(batch: Any) -> None:
        raise RuntimeError("writer defect")

    log._commit = broken_commit  # type: ignore[method-assign]
    await log.emit(sample_event(1))
    await log.emit(sample_event(2))
    with capture_logs() as logs:
        await log.close()
    assert log.queued == 0
    lost = [entry for entry in logs if entry["event"].startswith("audit events could not")]
    assert sum(entry["events"] for entry in lost) == 2
    assert all(entry["log_level"] == "error" for entry in lost)


async def test_an_unexpected_append_error_is_retried_not_fatal(
    sqlite_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt head row makes every append raise ``ValueError``: the writer keeps retrying
    (callers get 503 at their timeout), and shut-down reports the events it could not commit."""
    monkeypatch.setattr("bastion.audit.log._CLOSE_PATIENCE", 0.2)
    # The first event goes through a log of its own: within the 0.3 s the failing appends are
    # given, a slow disk could time it out too.
    seeding = await started(sqlite_stores, AuditConfig())
    await seeding.emit(sample_event(1))
    await seeding.close()
    metrics = Metrics()
    log = await started(sqlite_stores, AuditConfig(commit_timeout=0.3), metrics=metrics)
    await execute(sqlite_stores, ["UPDATE bastion_audit_chain SET hash = :h"], h="z" * 64)
    with pytest.raises(BastionError):
        await log.emit(sample_event(2))
    with pytest.raises(BastionError):
        await log.emit(sample_event(3))
    assert log._writer is not None
    assert not log._writer.done()
    assert append_errors(metrics) >= 1
    with capture_logs() as logs:
        await log.close()
    assert log.queued == 0
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert sum(entry["events"] for entry in errors) == 2
    assert len(await rows(sqlite_stores, "SELECT seq FROM audit_events")) == 1


async def test_a_timed_out_event_stays_queued_and_is_committed_later(
    sqlite_stores: Stores,
) -> None:
    log = await started(sqlite_stores, AuditConfig(commit_timeout=0.1))
    gate = asyncio.Event()
    append = log.chain.append

    async def slow_append(events: Sequence[PreparedEvent], key: SigningKey | None) -> Any:
        await gate.wait()
        return await append(events, key)

    log.chain.append = slow_append  # type: ignore[method-assign]
    try:
        with pytest.raises(BastionError):
            await log.emit(sample_event(1))
        gate.set()
        await log.flush()
    finally:
        await log.close()
    stored, _ = await query_events(sqlite_stores.database)
    assert [event.request_id for event in stored] == ["req-1"]
    assert orjson.loads(stored[0].detail_json) == stored[0].detail


async def test_pruning_never_deletes_a_newer_event_behind_an_older_one(database_url: str) -> None:
    """Timestamps from several processes are not in ``seq`` order: pruning stops before the
    first event at or after the cutoff, even when older events follow it."""
    async with started_stores(database_url) as stores:
        config = AuditConfig(retention=3600)
        log = await started(stores, config)
        try:
            for number in range(1, 6):
                await log.emit(sample_event(number))
        finally:
            await log.close()
        # Events 1, 2 and 4 are a day old; 3 (another process, a later clock) and 5 are recent.
        await execute(
            stores,
            ["UPDATE audit_events SET ts = :old WHERE seq IN (1, 2, 4)"],
            old=datetime.now(UTC) - timedelta(days=1),
        )
        deleted = await audit_store(stores, config).prune()
        remaining = [row[0] for row in await rows(stores, "SELECT seq FROM audit_events")]
    assert deleted == 2
    assert sorted(remaining) == [3, 4, 5]


class DriverError(Exception):
    """Stands for a driver exception carrying a SQLSTATE, as asyncpg's do."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(cause: BaseException) -> BaseException:
    outer = RuntimeError("wrapped")
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (DriverError("22021"), True),  # character_not_in_repertoire: a NUL in text
        (DriverError("22001"), True),  # string_data_right_truncation
        (wrapped(DriverError("22P02")), True),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), True),
        (DriverError("08006"), False),  # connection_failure: retried
        (DriverError("40001"), False),  # serialization_failure: retried
        (ValueError("non-hexadecimal number"), False),  # a corrupt head row: retried
        (OSError("connection reset"), False),
    ],
    ids=["nul", "too-long", "wrapped", "unencodable", "connection", "serialization", "head", "os"],
)
def test_only_errors_about_the_values_are_permanent(error: BaseException, permanent: bool) -> None:
    assert _is_data_error(error) is permanent

"""The durable audit log: an :class:`~bastion.audit.events.AuditSink` with group commit.

``emit()`` redacts the event, queues it in the open batch and waits until the transaction holding
that batch has committed, so the request that caused the event completes only once its event is
durable. One writer task per process commits batches back to back: events arriving while a
commit is in flight share the next one, and before starting a commit the writer gives the event
loop a few more turns while they keep adding events (:meth:`AuditLog._coalesce`), which is what
keeps throughput up (one transaction and one ``executemany`` per batch instead of per event).

With ``loss_window > 0``, ``emit()`` returns as soon as the event is queued and the writer commits
at least that often. A full queue either makes ``emit()`` wait for room or refuses the request
with 503 ``overloaded`` (``on_full``); an event is never dropped silently. A failed commit is
retried with backoff; its ``emit()`` callers are not answered until it succeeds or their
``commit_timeout`` passes (503; the events stay queued and are committed later). A batch the
database refuses for its values (a data error) is split until the offending event is alone;
that event is then recorded as an ``audit.event.rejected`` marker, so one bad event never holds
up the ones behind it. The writer task is supervised: should it ever fail, it is restarted and
the callers waiting on it are answered 503 (their events stay queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bastion.audit.chain import AuditChain, AuditDataError, PreparedEvent, SigningKey
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.keys import AuditKeyring, binding_secret
from bastion.audit.models import (
    ACTOR_MAX,
    CLIENT_IP_MAX,
    KIND_MAX,
    OUTCOME_MAX,
    REQUEST_ID_MAX,
    TARGET_MAX,
)
from bastion.audit.redaction import Redactor, clean_text
from bastion.http.problems import BastionError
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.store.database import Database
from bastion.store.errors import StoreError, describe
from bastion.store.keys import KeyStore
from bastion.store.stores import Stores

__all__ = ["AuditLog"]

_log: Any = get_logger("bastion.audit")

_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
_CLOSE_PATIENCE = 10.0
"""Seconds :meth:`AuditLog.close` keeps retrying a failing commit before giving up loudly."""
_RETRY_AFTER = "1"
REJECTED_KIND = "audit.event.rejected"
"""The marker recorded in place of an event the database refused (see :meth:`AuditLog._reject`)."""
_COALESCE_TURNS = 4
"""Event-loop turns the writer gives a growing batch before committing it (``max_wait = 0``)."""
_UNFINISHED = frozenset({"timed_out", "interrupted"})
"""Outcomes that answer a batch's callers while its events stay queued."""


class _GaveUp(Exception):
    """Shut-down stopped retrying a commit that kept failing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error


class _Batch:
    """Events committed together, and what their ``emit()`` calls wait on.

    One event and one timer per batch rather than per event: waiting is the hot path. ``settled``
    is set when the batch commits, when its ``commit_timeout`` passes first (``outcome`` says
    which), or when shut-down gives up on it; ``finished`` only once it committed or was given
    up, for :meth:`AuditLog.flush`.
    """

    __slots__ = ("events", "finished", "outcome", "settled", "timer")

    def __init__(self) -> None:
        self.events: list[PreparedEvent] = []
        self.settled = asyncio.Event()
        self.finished = asyncio.Event()
        self.outcome: str | None = None
        """``committed``, ``timed_out``, ``interrupted`` (the writer failed) or ``lost``;
        ``None`` while pending."""
        self.timer: asyncio.TimerHandle | None = None

    def settle(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.settled.set()
        if outcome not in _UNFINISHED:
            if self.timer is not None:
                self.timer.cancel()
            self.finished.set()


class AuditLog:
    """The hash-chained audit log of one database; one per process.

    :meth:`start` loads the HMAC key and starts the writer (and the pruner when ``retention``
    is set); :meth:`close` commits everything queued, then stops them.
    """

    def __init__(
        self,
        config: AuditConfig,
        database: Database,
        keys: KeyStore,
        *,
        metrics: Metrics | None = None,
        binding: bytes | None = None,
    ) -> None:
        """``binding``: the secret HMAC keys are bound to (:func:`binding_secret`); use
        :meth:`from_stores` to get it from ``[store]``."""
        self.config = config
        self.chain = AuditChain(database)
        self.keyring = AuditKeyring(keys, binding=binding)
        self._metrics = metrics
        self._redactor = Redactor()
        self._pending: deque[_Batch] = deque()
        self._committing: _Batch | None = None
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set to end a batch's gathering wait early: a full batch, a flush, shut-down."""
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._running = False
        self._healthy = False
        """The writer is up: ``False`` between a writer failure and its restart."""
        self._restarts = 0
        """Writer failures since the last successful commit: the restart's backoff."""
        self._closing = False
        self._key: SigningKey | None = None
        self._keys_loaded_at = 0.0
        self._batch_wait = config.loss_window or config.max_wait
        self._give_up_at: float | None = None
        """Once shut-down meets a failing database: when to stop retrying (for every batch)."""

    @classmethod
    def from_stores(
        cls, config: AuditConfig, stores: Stores, *, metrics: Metrics | None = None
    ) -> AuditLog:
        """The audit log over the database and keys of ``stores``."""
        return cls(
            config,
            stores.database,
            stores.keys,
            metrics=metrics,
            binding=binding_secret(stores.config),
        )

    @property
    def queued(self) -> int:
        """Events emitted and not yet committed."""
        return self._queued

    async def start(self) -> None:
        """Load the signing key and start the writer (idempotent)."""
        if self._running:
            return
        await self.chain.ensure_head()
        if self.config.hmac:
            self._key = await self.keyring.load()
            self._keys_loaded_at = time.monotonic()
        self._closing = False
        self._give_up_at = None
        self._running = True
        self._healthy = True
        self._restarts = 0
        self._writer = self._spawn_writer(0.0)
        if self.config.retention > 0:
            self._pruner = asyncio.create_task(self._prune_loop(), name="bastion-audit-pruner")

    async def close(self) -> None:
        """Commit every queued event, then stop (idempotent). Events that still cannot be
        committed after a few seconds of retrying, or that the writer left behind, are reported
        in an error log line and their ``emit()`` callers get an error."""
        if not self._running:
            return
        self._running = False
        self._closing = True
        self._hurry.set()
        self._wakeup.set()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        # The writer may be replaced while this waits (a restart after a failure).
        while self._writer is not None and not self._writer.done():
            await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None
        leftovers = [*self._pending]
        self._pending.clear()
        for batch in leftovers:
            self._abandon(batch, "the audit writer stopped before committing them")
        await self.chain.close()

    async def emit(self, event: AuditEvent) -> None:
        """Queue ``event`` and, unless a loss window is configured, wait for its commit.

        Raises :class:`BastionError` ``overloaded`` (503) when the log is not running, when the
        queue is full and ``on_full = "shed"``, or when ``commit_timeout`` passes first.
        """
        prepared = self._prepare(event)
        if not (self._running and self._healthy):
            raise BastionError(
                "overloaded", "The audit log is not running", headers={"Retry-After": _RETRY_AFTER}
            )
        if self._queued >= self.config.queue_size:
            await self._wait_for_room()
            if not self._running:  # shut down while this request waited
                raise BastionError(
                    "overloaded",
                    "The audit log is not running",
                    headers={"Retry-After": _RETRY_AFTER},
                )
        batch = self._open_batch()
        batch.events.append(prepared)
        self._queued += 1
        if self._queued >= self.config.queue_size:
            self._room.clear()
        self._wakeup.set()
        if self.config.loss_window > 0:
            return
        await batch.settled.wait()
        if batch.outcome != "committed":
            raise BastionError(
                "overloaded",
                "The audit log could not record the event in time"
                if batch.outcome in _UNFINISHED
                else "The audit log could not record the event",
                headers={"Retry-After": _RETRY_AFTER},
            )

    async def flush(self) -> None:
        """Wait until every event queued so far is committed."""
        last = self._pending[-1] if self._pending else self._committing
        if last is not None:
            self._hurry.set()
            await last.finished.wait()

    def _prepare(self, event: AuditEvent) -> PreparedEvent:
        """The event as stored and hashed: redacted, every text made storable (control
        characters and lone surrogates escaped, :func:`clean_text`), cut to its column."""
        redactor = self._redactor
        detail = orjson.dumps(redactor.detail(event.detail), option=orjson.OPT_SORT_KEYS)
        client_ip = event.client_ip
        request_id = event.request_id
        return PreparedEvent(
            ts_us=time.time_ns() // 1000,
            kind=clean_text(event.kind)[:KIND_MAX],
            outcome=clean_text(event.outcome)[:OUTCOME_MAX],
            actor=redactor.text(event.actor, ACTOR_MAX),
            target=redactor.text(event.target, TARGET_MAX),
            client_ip=clean_text(client_ip)[:CLIENT_IP_MAX] if client_ip else client_ip,
            request_id=clean_text(request_id)[:REQUEST_ID_MAX] if request_id else request_id,
            detail=detail.decode("utf-8"),
        )

    def _open_batch(self) -> _Batch:
        pending = self._pending
        if pending and len(pending[-1].events) < self.config.batch_size:
            return pending[-1]
        if pending:
            self._hurry.set()  # the open batch is full: no reason to wait for more
        batch = _Batch()
        if self.config.loss_window <= 0:
            batch.timer = asyncio.get_running_loop().call_later(
                self.config.commit_timeout, batch.settle, "timed_out"
            )
        pending.append(batch)
        return batch

    async def _wait_for_room(self) -> None:
        if self.config.on_full == "shed":
            raise BastionError(
                "overloaded",
                "The audit log is saturated",
                headers={"Retry-After": _RETRY_AFTER},
            )
        try:
            async with asyncio.timeout(self.config.commit_timeout):
                while self._queued >= self.config.queue_size:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise BastionError(
                "overloaded",
                "The audit log is saturated",
                headers={"Retry-After": _RETRY_AFTER},
            ) from None

    def _spawn_writer(self, delay: float) -> asyncio.Task[None]:
        task = asyncio.create_task(self._write_loop(delay), name="bastion-audit-writer")
        task.add_done_callback(self._writer_done)
        return task

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """Supervision: a writer that failed is logged, its waiting callers are answered 503
        (their events stay queued) and, unless shutting down, it is restarted after a backoff."""
        if task is not self._writer or task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        self._healthy = False
        self._restarts += 1
        if self._metrics is not None:
            self._metrics.store_error("audit", "append")
        _log.error(
            "audit writer failed; restarting it",
            error=describe(error),
            events=self._queued,
            restarts=self._restarts,
        )
        for batch in self._pending:
            batch.settle("interrupted")
        if self._closing or not self._running:
            return  # close() abandons what is left, loudly
        delay = min(_RETRY_FIRST * 2 ** (self._restarts - 1), _RETRY_MAX)
        self._writer = self._spawn_writer(delay)

    async def _write_loop(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        self._healthy = True
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._hurry.clear()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if (
                self._batch_wait > 0
                and not self._hurry.is_set()
                and len(self._pending) == 1
                and len(self._pending[0].events) < self.config.batch_size
            ):
                # Gather more events, until the wait ends or something asks to hurry.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._batch_wait):
                        await self._hurry.wait()
            elif self._batch_wait <= 0:
                await self._coalesce()
            batch = self._committing = self._pending.popleft()
            try:
                await self._commit(batch)
            except BaseException:
                if not batch.finished.is_set():
                    self._pending.appendleft(batch)  # still queued for the next writer
                raise
            finally:
                self._committing = None

    async def _coalesce(self) -> None:
        """Give the event loop a turn before committing, as long as each turn adds events.

        Requests the loop is about to run (their bytes already read) emit within a turn or two:
        without waiting for them, a commit that has just finished starts the next one with the
        one or two events that arrived meanwhile, and per-transaction work (the hand-off, the
        head row, ``COMMIT``) is spent on a handful of events. A turn that adds nothing ends it
        at once, so a lone event waits one turn (microseconds) and never a timer; at most
        :data:`_COALESCE_TURNS` turns, and none when something asks to hurry (a full batch, a
        flush, shut-down).
        """
        pending = self._pending
        for _ in range(_COALESCE_TURNS):
            if self._hurry.is_set() or len(pending) != 1:
                return
            size = len(pending[0].events)
            await asyncio.sleep(0)
            if len(pending) == 1 and len(pending[0].events) == size:
                return

    async def _commit(self, batch: _Batch) -> None:
        try:
            committed = await self._append(batch.events)
        except _GaveUp as gave_up:
            self._abandon(batch, describe(gave_up.error))
            return
        self._restarts = 0
        self._queued -= len(batch.events)
        if self._queued < self.config.queue_size:
            self._room.set()
        batch.settle("committed")
        self._count(event.kind for event, _ in committed)
        if self.config.log_events:
            self._log_committed(committed)

    async def _append(
        self, events: list[PreparedEvent], *, marker: bool = False
    ) -> list[tuple[PreparedEvent, tuple[int, str]]]:
        """Append ``events`` in order, retrying failures with backoff; returns each event
        appended with its ``seq`` and ``hash``.

        A data error is permanent for those rows: the batch is split in halves until the event
        the database refuses is alone, and that event is replaced by a marker (:meth:`_reject`).
        Any other failure (the database unreachable, a corrupt head row, anything unexpected)
        is retried until it succeeds or shut-down gives up (:class:`_GaveUp`).
        """
        delay = _RETRY_FIRST
        while True:
            try:
                key = await self._signing_key()
                hashes = await self.chain.append(events, key)
                return list(zip(events, hashes, strict=True))
            except AuditDataError as exc:
                if self._metrics is not None:
                    self._metrics.store_error("audit", "append")
                if len(events) > 1:
                    middle = len(events) // 2
                    head = await self._append(events[:middle], marker=marker)
                    return head + await self._append(events[middle:], marker=marker)
                if marker:
                    _log.error("audit marker refused by the database", error=str(exc))
                    return []
                return await self._append([self._reject(events[0], exc)], marker=True)
            except Exception as exc:
                if self._metrics is not None:
                    self._metrics.store_error("audit", "append")
                _log.warning(
                    "audit append failed; retrying",
                    error=describe(exc),
                    events=len(events),
                    retry_in=delay,
                )
                if self._closing:
                    now = time.monotonic()
                    if self._give_up_at is None:
                        self._give_up_at = now + _CLOSE_PATIENCE
                    if now >= self._give_up_at:
                        raise _GaveUp(exc) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    @staticmethod
    def _reject(event: PreparedEvent, error: AuditDataError) -> PreparedEvent:
        """The marker recorded instead of an event the database refused: when it was emitted,
        its kind and request id (escaped again, in JSON), and the database's reason."""
        _log.error(
            "audit event refused by the database; recording a marker instead",
            error=str(error),
            kind=event.kind,
            audit_request_id=event.request_id,
        )
        detail = {
            "kind": event.kind,
            "request_id": event.request_id,
            "error": clean_text(str(error))[:256],
        }
        return PreparedEvent(
            ts_us=event.ts_us,
            kind=REJECTED_KIND,
            outcome="failure",
            actor=None,
            target=None,
            client_ip=None,
            request_id=None,
            detail=orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode("utf-8"),
        )

    def _abandon(self, batch: _Batch, error: str) -> None:
        """Shut-down with events that cannot be committed: say loudly what was not recorded."""
        self._queued -= len(batch.events)
        self._room.set()
        _log.error(
            "audit events could not be committed before shut-down",
            error=error,
            events=len(batch.events),
            kinds=sorted({event.kind for event in batch.events}),
        )
        batch.settle("lost")

    async def _signing_key(self) -> SigningKey | None:
        if self._key is None:
            return None
        if time.monotonic() - self._keys_loaded_at >= self.config.key_refresh:
            self._keys_loaded_at = time.monotonic()
            try:
                self._key = await self.keyring.load()
            except StoreError as exc:
                if self._metrics is not None:
                    self._metrics.store_error("audit", "keys")
                _log.warning("audit key reload failed; keeping the current key", error=str(exc))
        return self._key

    def _count(self, kinds: Iterable[str]) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        counts: dict[str, int] = {}
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            metrics.audit_events(kind, count)

    def _log_committed(self, committed: list[tuple[PreparedEvent, tuple[int, str]]]) -> None:
        for event, (seq, digest) in committed:
            _log.info(
                "audit",
                seq=seq,
                hash=digest,
                kind=event.kind,
                outcome=event.outcome,
                actor=event.actor,
                target=event.target,
                client_ip=event.client_ip,
                audit_request_id=event.request_id,
                detail=event.detail,
            )

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.prune_interval)
            try:
                await self.prune()
            except StoreError as exc:
                if self._metrics is not None:
                    self._metrics.store_error("audit", "prune")
                _log.warning("audit prune failed", error=str(exc))

    async def prune(self, now: datetime | None = None) -> int:
        """Delete events older than ``retention`` now, leaving a checkpoint; returns how many."""
        if self.config.retention <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.config.retention)
        deleted = await self.chain.prune(cutoff, await self._signing_key())
        if deleted:
            _log.info("audit events pruned", deleted=deleted, before=cutoff.isoformat())
        return deleted

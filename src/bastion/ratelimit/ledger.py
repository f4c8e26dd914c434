"""Penalty records shared through the SQL store, for processes whose rate-limit counters are not
shared.

Without Redis each worker counts on its own (:mod:`bastion.ratelimit.memory`), but a ban one
worker starts must hold in every worker and instance (DESIGN.md §1). So must an inspection
strike block: a client has one record (its ``source`` says which started the current penalty),
which the gate checks. :class:`SqlBanLedger` keeps
an in-process mirror of the ``bastion_bans`` table, so the request path reads a dict and never
waits on the database:

- **Writes.** :meth:`~SqlBanLedger.record` updates the mirror at once and queues the ban; a
  background task upserts the queue (one statement per batch, coalesced per client), retries
  with a doubling back-off while the database fails and flushes it on close. An acknowledged ban
  is dropped only when :meth:`~SqlBanLedger.close` gives up on an unreachable database (logged).
  The upsert merges as :func:`~bastion.ratelimit.core.merge_penalty` does: the longer of the
  stored and the new penalty sets the end and the source. A queued write says whether it sets
  the level (it holds a ban) or keeps the stored one (strike blocks alone); that is carried as
  a flag, never inferred from the source, because a ban coalesced with a longer block is
  queued with the block's source and the ban's level.
- **Reads.** Every ``poll_interval`` the task re-reads the rows whose ``updated_at`` is later
  than its previous poll minus :data:`OVERLAP` seconds, which absorbs clock skew between hosts
  and writes committed after they were stamped; re-reading a row is harmless. A row overrides
  the mirror, except where this process still has a write queued for the client: then the
  mirror shows what the upsert will make of the row (the longer end and its source; the queued
  level when the write sets it, else the row's), so a poll never lowers a level in between.
- **Lifts.** :meth:`~SqlBanLedger.lift` turns the row into a tombstone (``source``
  :data:`LIFTED`, ``level`` 0, ``until`` the lift time, ``updated_at`` now) instead of deleting
  it, so the lift reaches the others
  through the same "updated since" read, and drops the client's escalation history with it.
- **Housekeeping.** Every :data:`RESYNC_INTERVAL` the poll reads the whole table instead and
  rebuilds the mirror from it (nothing missed even after a long outage), and deletes rows ended
  more than ``retention`` ago: bans, for their level, are remembered that long (pass
  ``[ratelimit.bans] reset_after``), tombstones only need to outlive the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, case, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.ratelimit.core import (
    INSPECT,
    NO_PENALTY,
    RATELIMIT,
    BanRecord,
    Penalty,
    merge_penalty,
)
from bastion.ratelimit.models import CLIENT_MAX_LENGTH, BanRow
from bastion.store.database import Database
from bastion.store.errors import StoreError

__all__ = ["LIFTED", "OVERLAP", "RESYNC_INTERVAL", "SqlBanLedger", "stored_client"]

OVERLAP = 30.0
"""Seconds each poll reaches back before the previous one (clock skew, commit latency)."""
RESYNC_INTERVAL = 300.0
"""Seconds between full reads of the table (and pruning of rows ended long ago)."""
LIFTED = "lifted"
"""The ``source`` of a tombstone: a lifted record, kept until every process has read it."""

_BATCH = 500
_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0

_log: Any = get_logger("bastion.ratelimit")


def stored_client(client: str) -> str:
    """The key a client's ban is stored under: the client itself, or ``sha256:<hex>`` of a
    bucket longer than the column, so a freak key can never block the write queue."""
    if len(client) <= CLIENT_MAX_LENGTH:
        return client
    return "sha256:" + hashlib.sha256(client.encode("utf-8", "surrogatepass")).hexdigest()


def _to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _Write(NamedTuple):
    """A client's queued write: its merged penalty and whether it sets the stored level."""

    until: float
    level: int
    """The record's level as this process knows it: a queued ban's, else the mirror's."""
    source: str
    sets_level: bool
    """True when a ban is among the merged writes: ``level`` replaces the stored one. False
    for strike blocks alone, which keep the stored level."""


_ALL_ROWS = select(BanRow.client, BanRow.until, BanRow.level, BanRow.source)
_UPDATED_ROWS = _ALL_ROWS.where(BanRow.updated_at > bindparam("after"))
"""A poll's reads: every row (a resync), or the rows updated since the previous poll."""


class SqlBanLedger:
    """The :class:`~bastion.ratelimit.core.BanLedger` of ``bastion_bans`` (module docstring).

    ``clock`` gives epoch seconds, the same clock the store computes ``until`` with. Bans are
    remembered ``retention`` seconds after they end, so a repeat offender gets the next duration.
    """

    def __init__(
        self,
        database: Database,
        *,
        poll_interval: float = 1.0,
        retention: float = 86400.0,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._database = database
        self._interval = poll_interval
        self._retention = retention
        self._clock = clock
        self._metrics = metrics
        self._mirror: dict[str, Penalty] = {}
        self._pending: dict[str, _Write] = {}
        # Serialises this ledger's database work, so a lift can never be overtaken by an older
        # queued write of the same client, nor a poll apply rows read before a local lift.
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watermark: float | None = None
        self._next_resync = 0.0
        self._failing: set[str] = set()
        """Which background operations (``write``, ``poll``) failed last time: logged once."""

    @property
    def pending(self) -> int:
        """Bans recorded by this process and not written yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Load the table into the mirror, write anything recorded before, and start polling.

        Raises :class:`StoreError` when the database cannot be read.
        """
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bastion-ban-ledger")
            if self._pending:
                self._wake.set()

    async def close(self, *, flush_timeout: float = 5.0) -> None:
        """Stop polling and write the queued bans, retrying for up to ``flush_timeout``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        deadline = asyncio.get_running_loop().time() + flush_timeout
        delay = _FIRST_RETRY
        while self._pending:
            try:
                await self.flush()
            except StoreError as exc:
                self._count_error("ban_write")
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    _log.error(
                        "bans not written before shut-down", bans=len(self._pending), error=str(exc)
                    )
                    return
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_RETRY)

    def penalty(self, client: str) -> Penalty:
        """The client's current or latest ban or strike block (``until`` 0.0: none)."""
        if len(client) > CLIENT_MAX_LENGTH:
            client = stored_client(client)
        return self._mirror.get(client, NO_PENALTY)

    def record(self, client: str, *, until: float, level: int, source: str = RATELIMIT) -> None:
        """Ban or block ``client`` until ``until`` (epoch seconds): in this process now, durably
        and in the others shortly, merged with what is known (:func:`merge_penalty`)."""
        if source not in (RATELIMIT, INSPECT):
            raise ValueError(f"unknown penalty source {source!r}")
        key = stored_client(client)
        current = self._mirror.get(key)
        if current is not None and current.until < self._clock() - self._retention:
            current = None  # ended too long ago: its level is forgotten, as a poll would
        merged = self._mirror[key] = merge_penalty(current, until, level, source)
        queued = self._pending.get(key)
        sets_level = source == RATELIMIT or (queued is not None and queued.sets_level)
        if queued is not None and queued.until > until:
            until, source = queued.until, queued.source
        # A block's level is the mirror's (a ban still queued included), never 0: the entry
        # is what the mirror shows until the write lands (_apply, _resync).
        self._pending[key] = _Write(until, merged.level, source, sets_level)
        self._wake.set()

    async def flush(self) -> None:
        """Write the queued bans now; :class:`StoreError` leaves the unwritten ones queued."""
        async with self._lock:
            # Writes that set the level and writes that keep it are two statements.
            for sets_level in (True, False):
                batch = [item for item in self._pending.items() if item[1].sets_level is sets_level]
                for start in range(0, len(batch), _BATCH):
                    chunk = batch[start : start + _BATCH]
                    now = self._clock()
                    await self._execute(self._upsert(chunk, now, sets_level=sets_level))
                    for client, write in chunk:
                        # A ban recorded while the statement ran is newer: it stays queued.
                        if self._pending.get(client) is write:
                            del self._pending[client]

    async def refresh(self) -> None:
        """One poll: apply the rows updated since the previous one (all rows on the first poll
        and every :data:`RESYNC_INTERVAL`)."""
        async with self._lock:
            now = self._clock()
            full = self._watermark is None or now >= self._next_resync
            if full:
                async with self._database.session() as session:
                    rows: Sequence[Any] = (await session.execute(_ALL_ROWS)).all()
                    await session.execute(self._prune(now))
                    await session.commit()
                self._resync(rows, now)
                self._next_resync = now + RESYNC_INTERVAL
            else:
                assert self._watermark is not None
                # Every second: read without a session, which costs the event loop a third.
                after = _to_datetime(self._watermark - OVERLAP)
                rows = await self._database.read(_UPDATED_ROWS, {"after": after})
                self._apply(rows, now)
            self._watermark = now

    async def active(self) -> list[BanRecord]:
        """Clients banned or blocked now according to the database, longest remaining first."""
        now = _to_datetime(self._clock())
        query = (
            select(BanRow.client, BanRow.until, BanRow.level, BanRow.source)
            .where(BanRow.source != LIFTED, BanRow.until > now)
            .order_by(BanRow.until.desc(), BanRow.client)
        )
        async with self._database.session() as session:
            rows = (await session.execute(query)).all()
        return [
            BanRecord(client=client, until=until.timestamp(), level=level, source=source)
            for client, until, level, source in rows
        ]

    async def lift(self, client: str) -> bool:
        """End the client's ban or strike block and forget its level, here at once and in the
        other processes on their next poll; False when it had none."""
        key = stored_client(client)
        now = self._clock()
        async with self._lock:
            queued = self._pending.get(key)
            was_banned = queued is not None and queued.until > now
            async with self._database.session() as session:
                row = await session.get(BanRow, key, with_for_update=True)
                if row is not None and row.source != LIFTED:
                    was_banned = was_banned or row.until.timestamp() > now
                    row.level = 0
                    row.source = LIFTED
                    row.until = row.updated_at = _to_datetime(now)
                    await session.commit()
            self._pending.pop(key, None)
            self._mirror.pop(key, None)
        return was_banned

    def _upsert(
        self, chunk: Sequence[tuple[str, _Write]], now: float, *, sets_level: bool
    ) -> Executable:
        insert = postgresql_insert if self._database.dialect == "postgresql" else sqlite_insert
        stamp = _to_datetime(now)
        statement = insert(BanRow).values(
            [
                {
                    "client": client,
                    "until": _to_datetime(write.until),
                    "level": write.level,
                    "source": write.source,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for client, write in chunk
            ]
        )
        new = statement.excluded
        # In DO UPDATE, the table's columns are the stored row (merge_penalty in SQL). A
        # tombstone always gives way; otherwise the longer penalty sets the end and the source.
        # Writes holding a ban set the level; strike blocks alone keep the stored one, unless
        # it is lifted or forgotten (ended more than retention ago, not pruned yet).
        lifted = BanRow.source == LIFTED
        replaced = or_(lifted, new.until >= BanRow.until)
        if sets_level:
            level: Any = new.level
        else:
            forgotten = BanRow.until < _to_datetime(now - self._retention)
            level = case((or_(lifted, forgotten), 0), else_=BanRow.level)
        return statement.on_conflict_do_update(
            index_elements=[BanRow.client],
            set_={
                "until": case((replaced, new.until), else_=BanRow.until),
                "level": level,
                "source": case((replaced, new.source), else_=BanRow.source),
                "created_at": case((lifted, new.created_at), else_=BanRow.created_at),
                "updated_at": new.updated_at,
            },
        )

    def _prune(self, now: float) -> Executable:
        cutoff = _to_datetime(now - self._retention)
        # The updated_at index narrows the scan; until still decides, as a long ban can end
        # well after its last write.
        return delete(BanRow).where(and_(BanRow.updated_at < cutoff, BanRow.until < cutoff))

    def _apply(self, rows: Iterable[tuple[str, datetime, int, str]], now: float) -> None:
        forgotten = now - self._retention
        for client, until_at, level, source in rows:
            until = until_at.timestamp()
            gone = source == LIFTED or until < forgotten
            queued = self._pending.get(client)
            if queued is not None:
                # Not written yet: show what the upsert will make of this row.
                if queued.sets_level:
                    level = queued.level
                elif gone:
                    level = 0
                if gone or queued.until > until:
                    until, source = queued.until, queued.source
                self._mirror[client] = Penalty(until, level, source)
            elif gone:
                self._mirror.pop(client, None)
            else:
                self._mirror[client] = Penalty(until, level, source)

    def _resync(self, rows: Iterable[tuple[str, datetime, int, str]], now: float) -> None:
        """Rebuild the mirror from the whole table plus the writes still queued."""
        self._mirror = {
            client: Penalty(write.until, write.level, write.source)
            for client, write in self._pending.items()
        }
        self._apply(rows, now)

    async def _execute(self, statement: Executable) -> None:
        async with self._database.session() as session:
            await session.execute(statement)
            await session.commit()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self._interval
        retry_at = 0.0
        delay = _FIRST_RETRY
        while True:
            wake_at = min(next_poll, retry_at) if self._pending else next_poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wake_at - loop.time(), 0.0))
            self._wake.clear()
            if self._pending and loop.time() >= retry_at:
                try:
                    await self.flush()
                    delay = _FIRST_RETRY
                    self._recovered("write")
                except StoreError as exc:
                    retry_at = loop.time() + delay
                    delay = min(delay * 2, _MAX_RETRY)
                    self._failed("write", exc)
            if loop.time() >= next_poll:
                next_poll = loop.time() + self._interval
                try:
                    await self.refresh()
                    self._recovered("poll")
                except StoreError as exc:
                    self._failed("poll", exc)

    def _failed(self, what: str, exc: StoreError) -> None:
        self._count_error(f"ban_{what}")
        if what not in self._failing:
            self._failing.add(what)
            _log.error(
                f"ban ledger cannot {what} the database; retrying",
                queued=len(self._pending),
                error=str(exc),
            )

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            _log.info(f"ban ledger can {what} the database again")

    def _count_error(self, op: str) -> None:
        if self._metrics is not None:
            self._metrics.store_error("database", op)

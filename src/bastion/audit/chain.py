"""The hash chain: canonical encoding, hashing, and appends serialised by the head row.

Every event row carries ``prev_hash`` (the ``hash`` of the row before it) and
``hash = SHA-256(prev_hash || canonical)``, or ``HMAC-SHA256(key, prev_hash || canonical)`` when
the row names a ``key_id``. ``canonical`` is :func:`canonical_bytes`: a JSON array of every other
column in a fixed order (docs/audit.md spells it out for third-party verifiers).

Appends from every process go through :meth:`AuditChain.append`: one transaction that locks the
head row of ``bastion_audit_chain`` (PostgreSQL ``SELECT … FOR UPDATE``; SQLite takes its
database write lock with ``BEGIN IMMEDIATE``, or on the pool's connection by writing the head row
first), numbers and hashes the batch after the head, inserts it with one ``executemany`` and
moves the head. So there is one gapless chain whatever the number of writers. On PostgreSQL a
writer that expects the head it wrote last tries a single conditional statement first (see
:data:`_APPEND_IF_HEAD`); on a SQLite file the whole transaction runs in the writer's own thread
(:mod:`bastion.audit.sqlite_writer`).
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import orjson
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.audit.models import CHAIN_ID, GENESIS_HASH, AuditChainRow, AuditEventRow
from bastion.audit.sqlite_writer import SqliteTransactions
from bastion.store.database import Database
from bastion.store.errors import StoreConflictError, StoreError, describe
from bastion.store.models import utc_now

__all__ = [
    "ANCHOR_VERSION",
    "CANONICAL_VERSION",
    "AuditChain",
    "AuditDataError",
    "ChainHead",
    "PreparedEvent",
    "SigningKey",
    "anchor_mac",
    "canonical_bytes",
    "chain_hash",
    "from_micros",
    "to_micros",
]

CANONICAL_VERSION = "bastion.audit.v1"
"""First element of every canonical encoding; a new encoding gets a new tag."""
ANCHOR_VERSION = "bastion.audit.anchor.v1"
"""First element of the encoding the checkpoint's HMAC covers."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DRIVER_ERRORS = (SQLAlchemyError, OSError, TimeoutError)

_EVENTS = cast(Table, AuditEventRow.__table__)
_CHAIN = cast(Table, AuditChainRow.__table__)


# Plain literals: the statement is fixed, only the parameters vary.
_INSERT_SQLITE = (
    "INSERT INTO audit_events (seq, ts, kind, outcome, actor, target, client_ip, request_id, "
    "detail, key_id, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_POSTGRESQL = (
    "INSERT INTO audit_events (seq, ts, kind, outcome, actor, target, client_ip, request_id, "
    "detail, key_id, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
_HEAD_SQLITE = "SELECT seq, hash FROM bastion_audit_chain WHERE id = ?"
_MOVE_HEAD_SQLITE = "UPDATE bastion_audit_chain SET seq = ?, hash = ?, updated_at = ? WHERE id = ?"
_APPEND_IF_HEAD = """
WITH head AS (
    UPDATE bastion_audit_chain SET seq = $3, hash = $4, updated_at = now()
    WHERE id = 'main' AND seq = $1 AND hash = $2
    RETURNING 1
), inserted AS (
    INSERT INTO audit_events (seq, ts, kind, outcome, actor, target, client_ip, request_id,
                              detail, key_id, prev_hash, hash)
    SELECT * FROM unnest($5::bigint[], $6::timestamptz[], $7::text[], $8::text[], $9::text[],
                         $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                         $15::text[], $16::text[])
    WHERE EXISTS (SELECT 1 FROM head)
    RETURNING 1
)
SELECT count(*) FROM inserted
"""
"""PostgreSQL: append a batch computed after head ``($1, $2)`` in one statement, only if the
head is still that one (the UPDATE row-locks it and re-checks it after any concurrent commit)."""
_NAIVE_EPOCH = datetime(1970, 1, 1)  # SQLite keeps UTC timestamps naive


class AuditDataError(StoreError):
    """The database refused the values of an event (SQLSTATE class 22: a NUL in text, a value
    too long, …) or the driver could not encode them: retrying the same rows cannot succeed."""


def _is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or the driver error it wraps) is about the values, not the database."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, DataError | sqlite3.DataError | UnicodeError):
            return True
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str) and state.startswith("22"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _append_failure(exc: BaseException) -> StoreError:
    """What a failed append raises: :class:`AuditDataError` when the database refused the
    values (the batch is split to find the event), else a plain :class:`StoreError` (retried)."""
    if _is_data_error(exc):
        return AuditDataError(f"audit append: {describe(exc)}")
    return StoreError(f"audit append: {describe(exc)}")


_last_second: tuple[int, str] = (0, "1970-01-01 00:00:00")
"""The last second :func:`_sqlite_timestamp` formatted: a batch's events share it."""


def _sqlite_timestamp(micros: int) -> str:
    """``ts`` as SQLAlchemy stores a :class:`~bastion.store.models.UtcDateTime` in SQLite
    (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC)."""
    global _last_second
    seconds, fraction = divmod(micros, 1_000_000)
    last = _last_second  # one read: another thread may replace it meanwhile
    if last[0] != seconds:
        last = (seconds, (_NAIVE_EPOCH + timedelta(seconds=seconds)).isoformat(" ", "seconds"))
        _last_second = last
    return f"{last[1]}.{fraction:06d}"


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime, exactly."""
    return (ts - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of ``micros`` microseconds since the epoch, exactly."""
    return _EPOCH + timedelta(microseconds=micros)


def canonical_bytes(
    seq: int,
    ts_us: int,
    kind: str,
    outcome: str,
    actor: str | None,
    target: str | None,
    client_ip: str | None,
    request_id: str | None,
    key_id: str | None,
    detail: str,
) -> bytes:
    """The bytes an event's hash covers besides ``prev_hash``: a compact JSON array (UTF-8, no
    whitespace) of the version tag and every column but ``prev_hash`` and ``hash``."""
    return orjson.dumps(
        [
            CANONICAL_VERSION,
            seq,
            ts_us,
            kind,
            outcome,
            actor,
            target,
            client_ip,
            request_id,
            key_id,
            detail,
        ]
    )


def chain_hash(prev_hash: str, canonical: bytes, key: bytes | None) -> str:
    """``hash`` of a row: lowercase hex of SHA-256 (or HMAC-SHA256 with ``key``) over the 32 raw
    bytes of ``prev_hash`` followed by ``canonical``. :class:`ValueError` if ``prev_hash`` is
    not 64 hex digits."""
    if len(prev_hash) != 64:
        raise ValueError("prev_hash is not a SHA-256 hex digest")
    message = bytes.fromhex(prev_hash) + canonical
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.digest(key, message, "sha256").hex()


def anchor_mac(key: bytes, seq: int, hash_hex: str) -> str:
    """HMAC-SHA256 of a pruning checkpoint: JSON ``["bastion.audit.anchor.v1", seq, hash]``."""
    return hmac.digest(key, orjson.dumps([ANCHOR_VERSION, seq, hash_hex]), "sha256").hex()


class PreparedEvent(NamedTuple):
    """An event ready to append: redacted, truncated to the column sizes, ``detail`` encoded.
    A tuple, so the writer unpacks it at C speed."""

    ts_us: int
    kind: str
    outcome: str
    actor: str | None
    target: str | None
    client_ip: str | None
    request_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The HMAC key new rows are hashed with, and its ``bastion_keys`` id."""

    id: str
    material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The head row: last appended ``seq``/``hash`` and the pruning checkpoint."""

    seq: int
    hash: str
    anchor_seq: int
    anchor_hash: str
    anchor_key_id: str | None
    anchor_mac: str | None


class AuditChain:
    """Appends to, reads the head of, and prunes the chain of one database."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._head_for_update = select(
            _CHAIN.c.seq, _CHAIN.c.hash, _CHAIN.c.anchor_seq, _CHAIN.c.anchor_hash
        ).where(_CHAIN.c.id == CHAIN_ID)
        if database.dialect == "postgresql":
            self._head_for_update = self._head_for_update.with_for_update()
        # SQLite has no row locks: writing the head row first takes the database's write lock
        # (waiting up to busy_timeout for another writer), so the read that follows is current.
        self._touch_head = (
            update(_CHAIN).where(_CHAIN.c.id == CHAIN_ID).values(seq=_CHAIN.c.seq)
            if database.dialect == "sqlite"
            else None
        )
        sqlite = database.dialect == "sqlite"
        self._insert_sql = _INSERT_SQLITE if sqlite else _INSERT_POSTGRESQL
        self._append_if_head = None if sqlite else _APPEND_IF_HEAD
        self._expected: tuple[int, str] | None = None
        """The head this process last wrote: the optimistic append's expectation."""
        self._stored_ts = _sqlite_timestamp if sqlite else from_micros
        path = database.sqlite_path
        self._sqlite = (
            SqliteTransactions(path, timeout=database.timeout) if path is not None else None
        )
        """A SQLite file's appends: one thread hand-off per batch (see
        :mod:`bastion.audit.sqlite_writer`); in-memory SQLite uses the pool's connection."""

    async def close(self) -> None:
        """Release what appends hold beyond the pool (a SQLite file's own connection)."""
        if self._sqlite is not None:
            await self._sqlite.close()

    async def ensure_head(self) -> None:
        """Create the head row if it is missing (the migration creates it; this repairs a
        database whose tables were created another way)."""
        try:
            async with self._database.engine.begin() as connection:
                found = await connection.scalar(
                    select(func.count()).select_from(_CHAIN).where(_CHAIN.c.id == CHAIN_ID)
                )
                if not found:
                    await connection.execute(
                        insert(_CHAIN).values(
                            id=CHAIN_ID,
                            seq=0,
                            hash=GENESIS_HASH,
                            anchor_seq=0,
                            anchor_hash=GENESIS_HASH,
                            updated_at=utc_now(),
                        )
                    )
        except IntegrityError:
            return  # another process created it first
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"audit chain head: {describe(exc)}") from exc

    async def head(self) -> ChainHead:
        """The head row as committed now."""
        try:
            async with self._database.engine.connect() as connection:
                row = (
                    await connection.execute(select(_CHAIN).where(_CHAIN.c.id == CHAIN_ID))
                ).one_or_none()
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"audit chain head: {describe(exc)}") from exc
        if row is None:
            raise StoreError("the audit chain has no head row (run `bastion db upgrade`)")
        return ChainHead(
            seq=row.seq,
            hash=row.hash,
            anchor_seq=row.anchor_seq,
            anchor_hash=row.anchor_hash,
            anchor_key_id=row.anchor_key_id,
            anchor_mac=row.anchor_mac,
        )

    async def append(
        self, events: Sequence[PreparedEvent], key: SigningKey | None
    ) -> list[tuple[int, str]]:
        """Append ``events`` in one transaction after the current head; returns the ``seq`` and
        ``hash`` each got. :class:`StoreError` when the transaction failed (nothing was
        appended): :class:`AuditDataError` when the database refused the events' values.

        On PostgreSQL, when this process wrote the head it last saw, the batch is first tried as
        one statement that moves the head only if it is still that one and inserts the rows only
        if it moved (two round trips with the pool's liveness check, instead of six); if another
        writer appended meanwhile, nothing is written and the batch takes the locked path.
        """
        if self._sqlite is not None:
            return await self._append_sqlite(self._sqlite, events, key)
        try:
            expected = self._expected
            self._expected = None
            if expected is not None and self._append_if_head is not None:
                rows, appended = self._rows(events, key, *expected)
                if await self._append_at(expected, rows, appended):
                    self._expected = appended[-1]
                    return appended
            async with self._database.engine.begin() as connection:
                seq, prev = await self._lock_head(connection)
                rows, appended = self._rows(events, key, seq, prev)
                # The driver's own executemany: per-row SQLAlchemy parameter processing cost
                # more than hashing and inserting together (the rows are already typed).
                await connection.exec_driver_sql(self._insert_sql, rows)
                last_seq, last_hash = appended[-1]
                await connection.execute(
                    update(_CHAIN)
                    .where(_CHAIN.c.id == CHAIN_ID)
                    .values(seq=last_seq, hash=last_hash, updated_at=utc_now())
                )
        except IntegrityError as exc:
            raise StoreConflictError(f"audit append: {describe(exc.orig or exc)}") from exc
        except (*_DRIVER_ERRORS, UnicodeError) as exc:
            raise _append_failure(exc) from exc
        self._expected = appended[-1]
        return appended

    async def _append_sqlite(
        self,
        transactions: SqliteTransactions,
        events: Sequence[PreparedEvent],
        key: SigningKey | None,
    ) -> list[tuple[int, str]]:
        """:meth:`append` on a SQLite file: read the head, hash, insert and move the head in
        one transaction run whole in the writer's thread."""

        def append(connection: sqlite3.Connection) -> list[tuple[int, str]]:
            head = connection.execute(_HEAD_SQLITE, (CHAIN_ID,)).fetchone()
            if head is None:
                raise StoreError("the audit chain has no head row (run `bastion db upgrade`)")
            rows, appended = self._rows(events, key, int(head[0]), str(head[1]))
            connection.executemany(_INSERT_SQLITE, rows)
            last_seq, last_hash = appended[-1]
            updated = _sqlite_timestamp(time.time_ns() // 1000)
            connection.execute(_MOVE_HEAD_SQLITE, (last_seq, last_hash, updated, CHAIN_ID))
            return appended

        try:
            return await transactions.run(append)
        except sqlite3.IntegrityError as exc:
            raise StoreConflictError(f"audit append: {describe(exc)}") from exc
        except (sqlite3.Error, OSError, UnicodeError) as exc:
            raise _append_failure(exc) from exc

    async def _append_at(
        self,
        expected: tuple[int, str],
        rows: list[tuple[Any, ...]],
        appended: list[tuple[int, str]],
    ) -> bool:
        """The one-statement append after ``expected`` (PostgreSQL); whether it happened."""
        assert self._append_if_head is not None
        columns = [list(column) for column in zip(*rows, strict=True)]
        last_seq, last_hash = appended[-1]
        params = (expected[0], expected[1], last_seq, last_hash, *columns)
        async with self._database.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            result = await autocommit.exec_driver_sql(self._append_if_head, params)
            inserted = result.scalar()
        return inserted == len(rows)

    def _rows(
        self, events: Sequence[PreparedEvent], key: SigningKey | None, seq: int, prev: str
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]]]:
        """The rows of ``events`` chained after ``seq`` and ``prev``, and each one's seq and
        hash."""
        key_id = key.id if key is not None else None
        # chain_hash() per row, with the key's HMAC state computed once per batch and copied
        # (two SHA-256 blocks fewer per row) and each raw digest chained without re-parsing hex.
        keyed = hmac.new(key.material, digestmod=hashlib.sha256) if key is not None else None
        stored_ts = self._stored_ts
        rows: list[tuple[Any, ...]] = []
        appended: list[tuple[int, str]] = []
        raw = bytes.fromhex(prev)
        for event in events:
            seq += 1
            ts_us, kind, outcome, actor, target, client_ip, request_id, detail = event
            # The one definition of the encoding: verify and third parties recompute it.
            canonical = canonical_bytes(
                seq, ts_us, kind, outcome, actor, target, client_ip, request_id, key_id, detail
            )
            mac = keyed.copy() if keyed is not None else hashlib.sha256()
            mac.update(raw)
            mac.update(canonical)
            raw = mac.digest()
            digest = raw.hex()
            rows.append(
                (
                    seq,
                    stored_ts(ts_us),
                    kind,
                    outcome,
                    actor,
                    target,
                    client_ip,
                    request_id,
                    detail,
                    key_id,
                    prev,
                    digest,
                )
            )
            appended.append((seq, digest))
            prev = digest
        return rows, appended

    async def prune(self, before: datetime, key: SigningKey | None, *, chunk: int = 10_000) -> int:
        """Delete the events before the first one emitted at or after ``before`` (so every
        deleted event is older than ``before``), moving the checkpoint
        to the last deleted row (HMAC'd with ``key``). Each chunk is one transaction under the
        head lock, so only one process prunes at a time and appends wait only briefly.
        Returns how many events were deleted."""
        deleted = 0
        try:
            async with self._database.engine.connect() as connection:
                # Up to the first event at or after ``before``, never past it: with several
                # processes (and clocks) timestamps are not in seq order, and a newer event
                # must not go because an older one follows it.
                first_kept = await connection.scalar(
                    select(func.min(_EVENTS.c.seq)).where(_EVENTS.c.ts >= before)
                )
                last = (
                    int(first_kept) - 1
                    if first_kept is not None
                    else await connection.scalar(
                        select(func.max(_EVENTS.c.seq)).where(_EVENTS.c.ts < before)
                    )
                )
                await connection.rollback()
                if last is None:
                    return 0
                while True:
                    async with connection.begin():
                        head_seq, _ = await self._lock_head(connection)
                        anchor = await connection.scalar(
                            select(_CHAIN.c.anchor_seq).where(_CHAIN.c.id == CHAIN_ID)
                        )
                        upto = min(int(last), int(anchor or 0) + chunk, head_seq)
                        if anchor is None or upto <= anchor:
                            return deleted
                        anchor_hash = await connection.scalar(
                            select(_EVENTS.c.hash).where(_EVENTS.c.seq == upto)
                        )
                        if anchor_hash is None:
                            raise StoreError(f"audit prune: event {upto} is missing")
                        result = await connection.execute(
                            delete(_EVENTS).where(_EVENTS.c.seq <= upto)
                        )
                        deleted += int(result.rowcount)
                        await connection.execute(
                            update(_CHAIN)
                            .where(_CHAIN.c.id == CHAIN_ID)
                            .values(
                                anchor_seq=upto,
                                anchor_hash=anchor_hash,
                                anchor_key_id=key.id if key is not None else None,
                                anchor_mac=anchor_mac(key.material, upto, anchor_hash)
                                if key is not None
                                else None,
                                updated_at=utc_now(),
                            )
                        )
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"audit prune: {describe(exc)}") from exc

    async def _lock_head(self, connection: AsyncConnection) -> tuple[int, str]:
        if self._touch_head is not None:
            await connection.execute(self._touch_head)
        row = (await connection.execute(self._head_for_update)).one_or_none()
        if row is None:
            raise StoreError("the audit chain has no head row (run `bastion db upgrade`)")
        return int(row.seq), str(row.hash)

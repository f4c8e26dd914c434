"""Reading the audit log: events by kind, actor and time, in ``seq`` order, a page at a time."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, select
from sqlalchemy.exc import SQLAlchemyError

from bastion.audit.models import AuditEventRow, in_chain
from bastion.http.problems import BastionError
from bastion.store.database import Database
from bastion.store.errors import StoreError, describe

__all__ = ["MAX_LIMIT", "StoredEvent", "decode_cursor", "encode_cursor", "query_events"]

MAX_LIMIT = 1000
"""Most events one call returns."""

_EVENTS = cast(Table, AuditEventRow.__table__)
_CURSOR_PREFIX = b"seq:"
_DRIVER_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One committed event with every column of ``audit_events`` (DESIGN.md §9)."""

    seq: int
    ts: datetime
    kind: str
    outcome: str
    actor: str | None
    target: str | None
    client_ip: str | None
    request_id: str | None
    detail: dict[str, Any]
    """The redacted detail, decoded."""
    detail_json: str
    """The detail exactly as stored and hashed (canonical JSON text)."""
    key_id: str | None
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Any) -> StoredEvent:
        """Build from a row of ``select(audit_events)``."""
        try:
            detail = orjson.loads(row.detail)
        except orjson.JSONDecodeError:
            detail = {}
        return cls(
            seq=int(row.seq),
            ts=row.ts,
            kind=row.kind,
            outcome=row.outcome,
            actor=row.actor,
            target=row.target,
            client_ip=row.client_ip,
            request_id=row.request_id,
            detail=detail if isinstance(detail, dict) else {"value": detail},
            detail_json=row.detail,
            key_id=row.key_id,
            prev_hash=row.prev_hash,
            hash=row.hash,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``ts`` as ISO 8601 with microseconds), for export and the API."""
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(timespec="microseconds"),
            "kind": self.kind,
            "outcome": self.outcome,
            "actor": self.actor,
            "target": self.target,
            "client_ip": self.client_ip,
            "request_id": self.request_id,
            "detail": self.detail,
            "key_id": self.key_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def encode_cursor(seq: int) -> str:
    """The opaque cursor that continues after ``seq``."""
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(seq).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The ``seq`` a cursor continues after; :class:`BastionError` ``bad_request`` if invalid."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(_CURSOR_PREFIX) or not raw[len(_CURSOR_PREFIX) :].isdigit():
        raise BastionError("bad_request", "Invalid cursor")
    seq = int(raw[len(_CURSOR_PREFIX) :])
    if seq >= 2**63:
        raise BastionError("bad_request", "Invalid cursor")
    return seq


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def query_events(
    database: Database,
    *,
    kind: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[StoredEvent], str | None]:
    """Events of the chain (after the checkpoint, up to the head) matching every given filter,
    oldest ``seq`` first, and the cursor of the next page (``None`` when this page is the
    last).

    ``kind`` is exact (``auth.login.failed``) or, ending with ``.`` or ``.*``, a prefix
    (``auth.`` matches every ``auth.…`` kind). ``since`` is inclusive, ``until`` exclusive; both
    must be timezone-aware. ``limit`` is 1 to :data:`MAX_LIMIT`. Invalid arguments raise
    :class:`BastionError` ``bad_request``; database failures :class:`StoreError`.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise BastionError("bad_request", f"limit must be between 1 and {MAX_LIMIT}")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise BastionError("bad_request", f"{name} must carry a time zone")
    query = select(_EVENTS).where(in_chain(_EVENTS.c.seq)).order_by(_EVENTS.c.seq).limit(limit + 1)
    if cursor is not None:
        query = query.where(_EVENTS.c.seq > decode_cursor(cursor))
    if kind:
        if kind.endswith(".*"):
            kind = kind[:-1]
        if kind.endswith("."):
            query = query.where(_EVENTS.c.kind.like(_like_prefix(kind), escape="\\"))
        else:
            query = query.where(_EVENTS.c.kind == kind)
    if actor is not None:
        query = query.where(_EVENTS.c.actor == actor)
    if since is not None:
        query = query.where(_EVENTS.c.ts >= since)
    if until is not None:
        query = query.where(_EVENTS.c.ts < until)
    try:
        async with database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"audit query: {describe(exc)}") from exc
    events = [StoredEvent.from_row(row) for row in rows[:limit]]
    next_cursor = encode_cursor(events[-1].seq) if len(rows) > limit else None
    return events, next_cursor

"""Reading the audit log for people: pages for the admin API, streams for ``bastion audit``.

Every read walks the primary key (``seq``) in bounded batches, so an export of millions of
events holds one batch in memory, and a page is one indexed range scan however deep it starts.
Only rows of the chain are served: ``anchor_seq < seq <= head seq``
(:func:`~bastion.audit.models.in_chain`), so a row forged below the pruning checkpoint or past
the head, which verification reports as ``outside_chain``, never reaches an export or the admin
API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from bastion.audit.models import AuditEventRow, in_chain
from bastion.audit.query import StoredEvent
from bastion.store.database import Database

__all__ = [
    "DEFAULT_LIMIT",
    "FIELDS",
    "MAX_LIMIT",
    "AuditFilter",
    "AuditPage",
    "AuditReader",
    "event_record",
]

DEFAULT_LIMIT = 100
"""Events per page when the query does not say."""
MAX_LIMIT = 500
"""Most events one page may ask for."""

FIELDS = (
    "seq",
    "ts",
    "kind",
    "outcome",
    "actor",
    "target",
    "client_ip",
    "request_id",
    "detail",
    "key_id",
    "prev_hash",
    "hash",
)
"""The fields of an event as every surface shows them, in this order: the columns of
``audit_events`` (DESIGN.md §9), as :meth:`StoredEvent.as_dict` gives them."""

_STREAM_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which events a query asks for, newest first."""

    kind: str | None = None
    """An exact kind, or a family ``auth.*`` (every kind starting with ``auth.``)."""
    actor: str | None = None
    since: datetime | None = None
    """Events at or after this instant."""
    until: datetime | None = None
    """Events before this instant."""
    before_seq: int | None = None
    """Events with a smaller ``seq`` (the cursor of the previous page)."""
    limit: int = DEFAULT_LIMIT

    @property
    def kind_prefix(self) -> str | None:
        """``auth.`` for ``kind = "auth.*"``; ``None`` for an exact kind or none."""
        if self.kind is not None and self.kind.endswith(".*"):
            return self.kind[:-1]
        return None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of events (JSON-ready dicts, newest first) and where the next one starts."""

    events: Sequence[dict[str, Any]]
    next_seq: int | None


def event_record(row: AuditEventRow) -> dict[str, Any]:
    """One stored event as a JSON-ready dict with :data:`FIELDS` (``detail`` decoded)."""
    return StoredEvent.from_row(row).as_dict()


def _filtered(query: AuditFilter) -> Select[AuditEventRow]:
    statement = select(AuditEventRow).where(in_chain(AuditEventRow.seq))
    prefix = query.kind_prefix
    if prefix is not None:
        # Escaped: ``_`` is a LIKE wildcard, and kinds may contain it.
        statement = statement.where(AuditEventRow.kind.startswith(prefix, autoescape=True))
    elif query.kind is not None:
        statement = statement.where(AuditEventRow.kind == query.kind)
    if query.actor is not None:
        statement = statement.where(AuditEventRow.actor == query.actor)
    if query.since is not None:
        statement = statement.where(AuditEventRow.ts >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEventRow.ts < query.until)
    return statement


class AuditReader:
    """Read-only queries over ``audit_events``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def page(self, query: AuditFilter) -> AuditPage:
        """At most ``query.limit`` events, newest first, below ``query.before_seq``."""
        statement = _filtered(query)
        if query.before_seq is not None:
            statement = statement.where(AuditEventRow.seq < query.before_seq)
        statement = statement.order_by(AuditEventRow.seq.desc()).limit(query.limit + 1)
        async with self._database.session() as session:
            rows = list((await session.scalars(statement)).all())
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return AuditPage(
            events=[event_record(row) for row in rows],
            next_seq=rows[-1].seq if more and rows else None,
        )

    async def stream(
        self, query: AuditFilter, *, after_seq: int = 0, batch: int = _STREAM_BATCH
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching event with ``seq > after_seq``, oldest first, ``batch`` rows per
        database round trip (``query.limit`` and ``before_seq`` do not apply)."""
        base = _filtered(query)
        last = after_seq
        while True:
            statement = (
                base.where(AuditEventRow.seq > last).order_by(AuditEventRow.seq).limit(batch)
            )
            async with self._database.session() as session:
                rows = list((await session.scalars(statement)).all())
            for row in rows:
                yield event_record(row)
            if len(rows) < batch:
                return
            last = rows[-1].seq

"""The slow-query log: Bastion's own SQL statements that take longer than ``store.slow_query``.

Two SQLAlchemy cursor events on the engine's sync engine time every statement, so it works the
same for aiosqlite and asyncpg. A fast statement costs two ``perf_counter`` calls and a dict
write; a slow one logs a ``bastion.store`` warning with the statement text (never its
parameters: they can hold password hashes, tokens or personal data), the duration, the rows and
the database kind, and counts ``bastion_store_slow_queries_total{op}``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bastion.observe.logging import get_logger

__all__ = ["SlowQueryLog", "statement_kind"]

_log: Any = get_logger("bastion.store")

_STARTED = "bastion_query_started"
"""Key in the DBAPI connection's ``info`` holding the start of the statement on it (statements on
one connection never overlap, so one slot per connection is enough)."""

_MAX_STATEMENT = 2000
_KINDS = frozenset({"select", "insert", "update", "delete"})


def statement_kind(statement: str) -> str:
    """The metric label of a statement: ``select``, ``insert``, ``update``, ``delete`` or
    ``other`` (a bounded set: the label never carries statement text)."""
    head = statement.lstrip(" \t\r\n(").split(None, 1)
    word = head[0].lower() if head else ""
    return word if word in _KINDS else "other"


def _one_line(statement: str) -> str:
    text = " ".join(statement.split())
    if len(text) > _MAX_STATEMENT:
        text = text[: _MAX_STATEMENT - 1] + "…"
    return text


class SlowQueryLog:
    """Times each statement of an engine and reports those at or above ``threshold`` seconds.

    ``on_slow`` (when given) receives the statement kind of each slow statement, for the metric.
    A statement that fails after the threshold (a timeout, a lock wait ended by the server) is
    reported too, with ``failed=True``.
    """

    def __init__(
        self,
        threshold: float,
        *,
        database: str,
        on_slow: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.database = database
        """The database kind in each log line (``sqlite``, ``postgresql``)."""
        self.on_slow = on_slow

    def attach(self, engine: Engine) -> None:
        """Listen to ``engine``'s statements (the ``sync_engine`` of an async engine)."""
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "handle_error", self._failed)

    def _before(self, conn: Any, _cursor: Any, *_args: Any) -> None:
        conn.info[_STARTED] = perf_counter()

    def _after(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        _parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        started = conn.info.pop(_STARTED, None)
        if started is None:
            return
        seconds = perf_counter() - started
        if seconds >= self.threshold:
            rowcount = getattr(cursor, "rowcount", -1)
            rows = rowcount if isinstance(rowcount, int) and rowcount >= 0 else None
            self._report(statement, seconds, rows=rows, executemany=executemany, failed=False)

    def _failed(self, context: Any) -> None:
        conn = context.connection
        statement = context.statement
        if conn is None or statement is None:
            return
        started = conn.info.pop(_STARTED, None)
        if started is None:
            return
        seconds = perf_counter() - started
        if seconds >= self.threshold:
            self._report(statement, seconds, rows=None, executemany=False, failed=True)

    def _report(
        self, statement: str, seconds: float, *, rows: int | None, executemany: bool, failed: bool
    ) -> None:
        kind = statement_kind(statement)
        fields: dict[str, Any] = {
            "statement": _one_line(statement),
            "duration_ms": round(seconds * 1000, 3),
            "rows": rows,
            "database": self.database,
            "op": kind,
        }
        if executemany:
            fields["executemany"] = True
        if failed:
            fields["failed"] = True
        _log.warning("slow query", **fields)
        if self.on_slow is not None:
            self.on_slow(kind)

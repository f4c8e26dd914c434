"""Audit appends to a SQLite file: a whole transaction in one hand-off to a thread.

Through the pooled aiosqlite connection, one append is a dozen round trips between the event loop
and the driver's thread (begin, lock, read the head, insert, move the head, commit, cursors),
each a thread wake-up and a loop wake-up. On a busy gateway that hand-off, not SQLite, was most
of what an audited request cost. :class:`SqliteTransactions` keeps one connection of its own in
one thread of its own and runs each append there as a single function: ``BEGIN IMMEDIATE`` (the
database's write lock, waiting up to ``busy_timeout`` for another writer, as every writer of the
file does), the caller's statements, ``COMMIT``. The loop hands it over once and is woken once.

The connection gets the settings the pool gives its own (:class:`~bastion.store.database.Database`):
WAL journaling and ``synchronous=NORMAL``, so a committed append is exactly as durable as any
other write to the database. A connection that failed is closed and opened again by the next
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["SqliteTransactions"]

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    # With WAL, NORMAL only risks the last transactions on power loss, never corruption: the
    # pool's setting, so the audit log is neither more nor less durable than the database.
    "PRAGMA synchronous=NORMAL",
)

_Work = Callable[[sqlite3.Connection], Any]
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", _Work | None]
"""The caller's loop, the future it awaits, and the work (``None``: close and stop)."""


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled: the transaction ran all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteTransactions:
    """Transactions on a SQLite file, each run whole in this object's own thread.

    A plain queue and one ``call_soon_threadsafe`` per transaction: the hand-off costs a third
    of an executor's. The connection is opened in the thread on first use and only ever used
    there. A caller cancelled while its transaction runs does not stop it.
    """

    def __init__(self, path: Path, *, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self._connection: sqlite3.Connection | None = None
        """Opened, used and closed only in the thread."""

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` in this object's
        thread; any exception rolls the transaction back and is raised here."""
        jobs = self._jobs if self._jobs is not None else self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        jobs.put((loop, future, work))
        return await future

    async def close(self) -> None:
        """Close the connection and stop the thread once the transactions handed over are done
        (idempotent; :meth:`run` starts again)."""
        jobs, self._jobs = self._jobs, None
        if jobs is None:
            return
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()
        jobs.put((loop, stopped, None))
        await stopped

    def _start(self) -> queue.SimpleQueue[_Job]:
        jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # A daemon: an interpreter exiting without close() must not wait on it (an unfinished
        # transaction is rolled back by SQLite, never half-applied).
        threading.Thread(
            target=self._serve, args=(jobs,), name="bastion-audit-sqlite", daemon=True
        ).start()
        self._jobs = jobs
        return jobs

    def _serve(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            loop, future, work = jobs.get()
            result: Any = None
            error: BaseException | None = None
            try:
                if work is None:
                    self._disconnect()
                else:
                    result = self._transaction(work)
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            # A closed loop (RuntimeError) means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)
            if work is None:
                return

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection if self._connection is not None else self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException as exc:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    self._disconnect()
            if isinstance(exc, sqlite3.OperationalError | sqlite3.InterfaceError):
                self._disconnect()  # locked out, I/O error, closed: start afresh next time
            raise
        return result

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, BEGIN and COMMIT are explicit.
        connection = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        try:
            for pragma in _PRAGMAS:
                connection.execute(pragma)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

"""Extra copies of the audit log: a JSON-lines file and syslog (``[audit.file]``,
``[audit.syslog]``).

The SQL log is the record: an event is committed there before the response of its request
completes. The copies are best effort and never slow or fail a request. :meth:`emit` only puts
the event on a bounded queue; one task per copy drains it in batches and does the blocking I/O
in a worker thread, so neither a slow disk nor an unreachable collector touches the event loop.
A full queue drops the event from that copy, and a failed write loses that batch from it; both
are counted in ``bastion_store_errors_total{store="audit_file"|"audit_syslog", op}`` and logged.

Each copy carries the schema's fields except the chain's (``seq``, ``prev_hash``, ``hash``):
``ts`` (RFC 3339, UTC, microseconds), ``kind``, ``outcome``, ``actor``, ``client_ip``,
``request_id``, ``target`` and ``detail`` with secrets redacted as in the SQL log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from bastion.audit.events import AuditEvent, AuditSink
from bastion.audit.models import ACTOR_MAX, TARGET_MAX
from bastion.audit.redaction import Redactor
from bastion.audit.sink_config import FileSinkConfig, SyslogSinkConfig, syslog_target
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics

__all__ = [
    "AuditCopies",
    "JsonLinesFileSink",
    "QueuedSink",
    "SyslogSink",
    "copy_record",
    "syslog_message",
]

_log: Any = get_logger("bastion.audit")

_BATCH = 512
"""Most events one write carries."""
_CLOSE_TIMEOUT = 5.0
"""Seconds :meth:`QueuedSink.close` waits for the queue to drain."""
_SEVERITY = {"success": 5, "failure": 4, "denied": 4}
"""Syslog severity by outcome: notice for what succeeded, warning for what failed or was
refused."""
_MSGID_MAX = 32
_DATAGRAM_MAX = 65_000
"""Largest message sent as one datagram: under UDP's 65,507-byte limit over IPv4."""

_REDACTOR = Redactor()


def copy_record(event: AuditEvent, ts: datetime) -> dict[str, Any]:
    """The JSON object of one copied event, redacted as the SQL log redacts it."""
    return {
        "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "kind": event.kind,
        "outcome": event.outcome,
        "actor": _REDACTOR.text(event.actor, ACTOR_MAX),
        "client_ip": event.client_ip,
        "request_id": event.request_id,
        "target": _REDACTOR.text(event.target, TARGET_MAX),
        "detail": _REDACTOR.detail(event.detail),
    }


class QueuedSink(ABC):
    """An :class:`AuditSink` whose writes happen off the request path: a bounded queue, one
    draining task started on first use, blocking I/O in a worker thread."""

    store = "audit_copy"
    """The ``store`` label of this copy's failures."""

    def __init__(self, *, queue: int, metrics: Metrics | None) -> None:
        self._queue: asyncio.Queue[tuple[AuditEvent, datetime] | None] = asyncio.Queue(queue)
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        """Events this copy has written so far."""

    async def emit(self, event: AuditEvent) -> None:
        """Queue ``event``; never waits and never raises."""
        if self._closed:
            return
        if self._task is None:
            # A fresh context: the task outlives this request and must not log its ids (or
            # carry anything else it bound) on every later failure.
            self._task = asyncio.create_task(
                self._drain(), name=f"bastion-{self.store}", context=contextvars.Context()
            )
        try:
            self._queue.put_nowait((event, datetime.now(UTC)))
        except asyncio.QueueFull:
            self._failed("dropped", "queue full", 1)

    @abstractmethod
    async def start(self) -> None:
        """Check at start-up that the copy can be written at all (a configuration error is
        better found then than as a counter later); ``OSError`` saying why otherwise."""

    async def close(self) -> None:
        """Write what is queued (for a few seconds at most), then release the resources."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            # A full queue ends the task once drained (``_closed``) instead of at the marker.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(task), _CLOSE_TIMEOUT)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self._release)

    async def _drain(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            batch: list[tuple[AuditEvent, datetime]] = []
            stop = item is None
            if item is not None:
                batch.append(item)
            while not stop and len(batch) < _BATCH and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            if batch:
                await self._write_batch(batch)
            if stop or (self._closed and queue.empty()):
                return

    async def _write_batch(self, batch: list[tuple[AuditEvent, datetime]]) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except (OSError, ValueError) as exc:
            self._failed("write", str(exc), len(batch))
        else:
            self.written += len(batch)

    def _failed(self, op: str, reason: str, events: int) -> None:
        if self._metrics is not None:
            self._metrics.store_error(self.store, op)
        _log.warning("audit copy failed", sink=self.store, op=op, error=reason, events=events)

    @abstractmethod
    def _write(self, batch: Sequence[tuple[AuditEvent, datetime]]) -> None:
        """Write one batch (in a worker thread); raise ``OSError`` when it is lost."""

    @abstractmethod
    def _release(self) -> None:
        """Close files and sockets (in a worker thread)."""


class JsonLinesFileSink(QueuedSink):
    """Appends one JSON object per event to a file.

    Every batch is one ``write`` on a descriptor opened with ``O_APPEND``, so several workers
    may share the file. Before each batch the path is compared with the open file (device and
    inode): when it was moved or removed (log rotation) the path is opened afresh, as
    :class:`logging.handlers.WatchedFileHandler` does.
    """

    store = "audit_file"

    def __init__(self, config: FileSinkConfig, *, metrics: Metrics | None = None) -> None:
        super().__init__(queue=config.queue, metrics=metrics)
        self.path = config.path
        self._fsync = config.fsync
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    async def start(self) -> None:
        """Open (or create) the file now: a path in a missing directory or without write
        permission stops the start."""
        try:
            await asyncio.to_thread(self._current)
        except OSError as exc:
            raise OSError(f"[audit.file] cannot open {self.path}: {exc.strerror or exc}") from exc

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        return fd

    def _current(self) -> int:
        if self._fd is None:
            return self._open()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self._identity:
            self._release()
            return self._open()
        return self._fd

    def _write(self, batch: Sequence[tuple[AuditEvent, datetime]]) -> None:
        data = b"".join(
            orjson.dumps(copy_record(event, ts), option=orjson.OPT_APPEND_NEWLINE)
            for event, ts in batch
        )
        fd = self._current()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(fd)

    def _release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def syslog_message(
    event: AuditEvent,
    ts: datetime,
    *,
    facility: int,
    app_name: str,
    hostname: str,
    procid: str,
    max_size: int | None = None,
) -> bytes:
    """One RFC 5424 message: the event's kind as MSGID and its JSON object as MSG. A message
    longer than ``max_size`` bytes carries ``detail`` as ``{"truncated": <its size>}`` instead,
    so the rest of the event still fits one datagram."""
    severity = _SEVERITY.get(event.outcome, 5)
    stamp = ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
    msgid = "".join(c if "!" <= c <= "~" else "_" for c in event.kind)[:_MSGID_MAX] or "-"
    header = f"<{facility * 8 + severity}>1 {stamp} {hostname} {app_name} {procid} {msgid} - "
    record = copy_record(event, ts)
    message = header.encode("ascii") + orjson.dumps(record)
    if max_size is not None and len(message) > max_size:
        record["detail"] = {"truncated": len(orjson.dumps(record["detail"]))}
        message = header.encode("ascii") + orjson.dumps(record)
    return message


def _header_token(value: str, limit: int) -> str:
    token = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return token or "-"


class SyslogSink(QueuedSink):
    """Sends each event as an RFC 5424 message: one datagram per message over UDP or a unix
    datagram socket (``/dev/log``), octet-counted frames (RFC 6587) over one TCP connection,
    reconnected after a failure."""

    store = "audit_syslog"

    def __init__(self, config: SyslogSinkConfig, *, metrics: Metrics | None = None) -> None:
        super().__init__(queue=config.queue, metrics=metrics)
        self._transport, self._host, self._port = syslog_target(config.address)
        self._facility = config.facility
        self._app_name = config.app_name
        self._timeout = config.timeout
        self._hostname = _header_token(socket.gethostname(), 255)
        self._procid = str(os.getpid())
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Resolve the collector's host name now (a misspelt name stops the start); whether
        the collector is up is not checked: it may come and go, and the copy follows."""
        if self._transport == "unix":
            return
        try:
            await asyncio.get_running_loop().getaddrinfo(self._host, self._port)
        except OSError as exc:
            raise OSError(f"[audit.syslog] cannot resolve {self._host}: {exc}") from exc

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect(self._host)
            except OSError:
                sock.close()
                raise
        elif self._transport == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self._timeout)
            sock.connect(address)
        else:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        self._sock = sock
        return sock

    def _write(self, batch: Sequence[tuple[AuditEvent, datetime]]) -> None:
        messages = [
            syslog_message(
                event,
                ts,
                facility=self._facility,
                app_name=self._app_name,
                hostname=self._hostname,
                procid=self._procid,
                max_size=None if self._transport == "tcp" else _DATAGRAM_MAX,
            )
            for event, ts in batch
        ]
        try:
            sock = self._connect()
            if self._transport == "tcp":
                sock.sendall(b"".join(b"%d %b" % (len(m), m) for m in messages))
            else:
                for message in messages:
                    sock.send(message)
        except OSError:
            # A broken connection is not reused: the next batch connects afresh.
            self._release()
            raise

    def _release(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()


class AuditCopies:
    """The record sink first, then every configured copy: ``emit`` returns once the record has
    the event (committed, for the SQL log); the copies only queue it."""

    def __init__(self, record: AuditSink, copies: Sequence[QueuedSink]) -> None:
        self.record = record
        self.copies = tuple(copies)

    async def emit(self, event: AuditEvent) -> None:
        try:
            await self.record.emit(event)
        finally:
            # Copied even when the record failed: the copy is then the only trace of it.
            for copy in self.copies:
                await copy.emit(event)

    async def start(self) -> None:
        """Check every copy can be written (:meth:`QueuedSink.start`)."""
        for copy in self.copies:
            await copy.start()

    async def close(self) -> None:
        """Flush and close the copies (the record sink is its owner's to close)."""
        for copy in self.copies:
            await copy.close()

    @classmethod
    def wrap(
        cls,
        record: AuditSink,
        *,
        file: FileSinkConfig,
        syslog: SyslogSinkConfig,
        metrics: Metrics | None = None,
    ) -> AuditSink:
        """``record`` alone when no copy is configured, else ``record`` and its copies."""
        copies: list[QueuedSink] = []
        if file.enabled:
            copies.append(JsonLinesFileSink(file, metrics=metrics))
        if syslog.enabled:
            copies.append(SyslogSink(syslog, metrics=metrics))
        return cls(record, copies) if copies else record

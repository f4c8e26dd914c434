"""Structured logs: structlog rendering JSON lines with orjson (or a console format).

The request id is bound in a context variable for the duration of each request, so every line
logged while serving it — Bastion's own and the wrapped app's structlog calls — carries it; with
tracing on, so are the trace and span ids of the request's server span.

The access log writes one line per request, so in JSON mode it skips structlog's processor chain
(a third of the whole pipeline's budget, measured) and renders the same line shape directly:
orjson, a timestamp formatted once per second, and a buffered stream flushed within a second.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from bastion.observe.config import LoggingConfig

__all__ = [
    "REQUEST_ID",
    "TRACE_IDS",
    "JsonLines",
    "TraceIds",
    "access_output",
    "configure_logging",
    "get_logger",
]

REQUEST_ID: ContextVar[str | None] = ContextVar("bastion_request_id", default=None)
"""The id of the request being served; added to every structlog line logged meanwhile."""

TraceIds = tuple[str, str, bool]
"""Trace id (32 hex digits), span id (16 hex digits) and whether the trace is sampled."""

TRACE_IDS: ContextVar[TraceIds | None] = ContextVar("bastion_trace_ids", default=None)
"""The server span of the request being served (set only when tracing is on); its ids are
added to every structlog line logged meanwhile."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _render_json(_: WrappedLogger, __: str, event: EventDict) -> bytes:
    return orjson.dumps(event, default=str)


def _render_json_text(_: WrappedLogger, __: str, event: EventDict) -> str:
    return orjson.dumps(event, default=str).decode("utf-8")


def _add_stdlib_logger_name(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None:
        event.setdefault("logger_name", record.name)
    return event


def _add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    trace = TRACE_IDS.get()
    if trace is not None:
        event.setdefault("trace_id", trace[0])
        event.setdefault("span_id", trace[1])
    return event


_FLUSH_AFTER = 1.0
"""Seconds a buffered access-log line may wait before it is flushed."""


class JsonLines:
    """Appends JSON lines to a binary stream without flushing each one; a flush follows within
    a second of the first unflushed line (and on every structlog line, which flushes itself)."""

    __slots__ = ("_flush_scheduled", "_second", "_stamp", "_stream")

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._second = -1
        self._stamp = ""
        self._flush_scheduled = False

    def timestamp(self) -> str:
        """UTC ISO-8601 with microseconds, as structlog's ``TimeStamper(fmt="iso")`` writes it."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._stamp}{int((now - second) * 1_000_000):06d}Z"

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(orjson.dumps(record, default=str) + b"\n")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        # A stream that went away (closed pipe, shut-down) leaves nothing to save.
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


_access_output: JsonLines | None = None


def _buffered_stdout() -> BinaryIO:
    """Standard output with a buffer of its own.

    With ``PYTHONUNBUFFERED`` (common in containers) ``sys.stdout.buffer`` writes each line with
    its own system call, which cost the gateway about 12 µs per request in access-log lines
    (measured); this buffer is flushed within a second of a line and at exit.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdout.buffer  # a replaced stdout (tests, embedding): use it as it is
    stream = io.BufferedWriter(io.FileIO(fd, "wb", closefd=False), buffer_size=1 << 16)
    atexit.register(_flush_quietly, stream)
    return stream


def _flush_quietly(stream: BinaryIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def access_output() -> JsonLines | None:
    """The fast JSON-lines writer in JSON mode; ``None`` in console mode (use structlog)."""
    return _access_output


def configure_logging(
    config: LoggingConfig, log_format: str | None = None, *, cache_loggers: bool = True
) -> None:
    """Configure structlog (and the standard library's root logger) for this process.

    ``cache_loggers``: each module's logger binds its configuration on first use, for speed.
    Code that configures logging again later in the same process (tests) passes ``False``,
    since a bound logger keeps the configuration it was bound with."""
    global _access_output
    fmt = log_format or config.format
    level = _LEVELS[config.level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors = [*shared, structlog.processors.format_exc_info, _render_json]
        foreign: list[Any] = [structlog.processors.format_exc_info, _render_json_text]
        stream = _buffered_stdout()
        # Other lines flush themselves (and any access lines buffered before them, in order).
        factory: Any = structlog.BytesLoggerFactory(stream)
        _access_output = JsonLines(stream) if level <= logging.INFO else None
    else:
        _access_output = None
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stdout)
        foreign = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=cache_loggers,
    )
    # Libraries log through the standard library: their warnings go to standard error in the
    # same format, with the request and trace ids of the request they were logged in.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_add_stdlib_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *foreign],
        )
    )
    logging.basicConfig(level=max(level, logging.WARNING), handlers=[handler], force=True)


def get_logger(name: str) -> Any:
    """A structlog logger tagged with ``logger_name=name``, configured lazily on first use."""
    return structlog.get_logger(logger_name=name)

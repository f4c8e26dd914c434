"""A lean HTTP/1.1 client connection on an asyncio Protocol.

One :class:`UpstreamConnection` carries one exchange at a time. The request is written with
``transport.write`` as pre-encoded bytes; the response is parsed by ``httptools`` in
``data_received`` and handed to the waiting coroutine through one Future per wait, with no Task
per request. Body chunks are buffered up to a high-water mark, then the transport stops reading
until the consumer catches up, so a slow client slows the upstream instead of growing memory.

Timeouts are deadlines checked by the owning :class:`~bastion.proxy.pool.UpstreamClient`'s
ticker: a wait records its deadline, the ticker fails waits that passed it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from bastion.proxy.headers import RESPONSE_NOT_RELAYED, connection_tokens

if TYPE_CHECKING:
    from bastion.proxy.pool import ConnectionPool

__all__ = ["UpstreamConnection", "UpstreamError"]

_HIGH_WATER = 256 * 1024
"""Buffered response bytes at which the connection stops reading from the upstream."""
_MAX_HEAD_BYTES = 64 * 1024
"""Largest response head accepted (the parser itself would buffer header values unbounded)."""


class UpstreamError(Exception):
    """A failed exchange with the upstream; ``kind`` is a metric label (``connect``,
    ``timeout``, ``protocol``, ``reset``) and ``received`` says whether any response byte
    arrived on the connection for the current request."""

    def __init__(self, kind: str, message: str, *, received: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.received = received


class _HeadTooLarge(Exception):
    """Raised inside the parser's header callback to stop parsing an oversized head."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, reused by the pool between exchanges."""

    __slots__ = (
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_drain_waiter",
        "_head_bytes",
        "_head_method",
        "_head_waiter",
        "_interim",
        "_keep_alive",
        "_listed",
        "_loop",
        "_parser",
        "_reading_paused",
        "_until_close",
        "_write_paused",
        "busy",
        "complete",
        "deadline",
        "error",
        "head_done",
        "headers",
        "idle_since",
        "pool",
        "received",
        "request_sent",
        "reused",
        "status",
        "timeout",
        "transport",
    )

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._head_method = False
        self._head_bytes = 0
        self._interim = False
        self._keep_alive = False
        self._until_close = False
        self._listed: frozenset[bytes] = frozenset()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.received = False
        self.request_sent = True
        self.error: UpstreamError | None = None
        self.busy = False
        self.reused = False
        self.timeout = 0.0
        self.deadline = 0.0
        self.idle_since = 0.0

    # -- exchange API ----------------------------------------------------------------------

    def begin(self, *, timeout: float, head_method: bool) -> None:
        """Reset per-exchange state before a request is written."""
        if self._head_method:
            # The parser expected the body a HEAD response announces; start afresh.
            self._parser = httptools.HttpResponseParser(self)
        self._head_method = head_method
        self._head_bytes = 0
        self.timeout = timeout
        self.status = 0
        self.headers = []
        self._listed = frozenset()
        self.head_done = False
        self.complete = False
        self.received = False
        self.request_sent = False
        self._until_close = False
        self._interim = False
        self.deadline = 0.0

    def write(self, data: bytes) -> None:
        """Write request bytes (the transport buffers; :meth:`drain` applies backpressure)."""
        transport = self.transport
        if transport is None or self.error is not None:
            raise self.error or UpstreamError("reset", "connection closed")
        transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Write several buffers at once (one vectored send where the loop supports it)."""
        transport = self.transport
        if transport is None or self.error is not None:
            raise self.error or UpstreamError("reset", "connection closed")
        if len(parts) == 1:
            transport.write(parts[0])
        else:
            transport.writelines(parts)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.error is not None:
            raise self.error
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    async def read_head(self) -> None:
        """Wait for the final response head (``status`` and ``headers``)."""
        if self.head_done:
            return
        if self.error is not None:
            raise self.error
        waiter = self._loop.create_future()
        self._head_waiter = waiter
        if self.timeout:
            self.deadline = self._loop.time() + self.timeout
        try:
            await waiter
        finally:
            self._head_waiter = None
            self.deadline = 0.0

    def sending(self) -> None:
        """The request body made progress: a wait for the response head restarts its clock.

        The read timeout is the upstream's time to answer, so a slow upload must not use it up
        (a client that stops sending altogether still runs into it).
        """
        if self._head_waiter is not None and self.timeout:
            self.deadline = self._loop.time() + self.timeout

    def take_body(self) -> bytes:
        """Everything buffered so far (empty when nothing is)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def read_body(self) -> bytes:
        """The next buffered body bytes; ``b""`` once the response is complete."""
        if not self._chunks and not self.complete:
            if self.error is not None:
                raise self.error
            waiter = self._loop.create_future()
            self._body_waiter = waiter
            if self.timeout:
                self.deadline = self._loop.time() + self.timeout
            try:
                await waiter
            finally:
                self._body_waiter = None
                self.deadline = 0.0
        return self.take_body()

    @property
    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the upstream keeps the connection open."""
        return (
            self.complete
            and self.request_sent
            and self.error is None
            and not self._until_close
            and self.transport is not None
            and not self.transport.is_closing()
            and self._keep_alive
        )

    def fail(self, error: UpstreamError) -> None:
        """End the exchange with ``error``: wake every waiter and drop the connection."""
        if self.error is None:
            self.error = error
        self._wake(error)
        transport = self.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        """Close the connection gracefully (idle eviction, shutdown)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.fail(UpstreamError("protocol", "unexpected data from upstream"))
            self.pool.forget(self)
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("protocol", "unexpected protocol switch", received=True))
            return
        except httptools.HttpParserError as exc:
            too_large = isinstance(exc.__context__, _HeadTooLarge)
            reason = "response head too large" if too_large else f"invalid response: {exc}"
            self.fail(UpstreamError("protocol", reason, received=True))
            return
        if not self.head_done:
            # A header still incomplete: the parser keeps buffering it, so bound it here.
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self.fail(UpstreamError("protocol", "response head too large", received=True))

    def eof_received(self) -> bool | None:
        self._closed_by_peer(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_peer(exc)
        self.transport = None
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(self.error or UpstreamError("reset", "connection lost"))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # trailer fields are not relayed
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _HeadTooLarge
        name = name.lower()
        if name == b"connection":
            self._listed = self._listed | connection_tokens(value)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status > 599:
            self.fail(UpstreamError("protocol", f"invalid status {status}", received=True))
            return
        if status < 200:
            if status == 101:
                self.fail(UpstreamError("protocol", "unexpected protocol switch", received=True))
                return
            # Interim responses (100, 102, 103) are not relayed; the final one follows.
            self._interim = True
            self.headers = []
            self._listed = frozenset()
            return
        self.status = status
        headers = self.headers
        framed = False
        kept: list[tuple[bytes, bytes]] = []
        listed = self._listed
        for pair in headers:
            name = pair[0]
            if name == b"content-length":
                framed = True
            elif name == b"transfer-encoding":
                framed = True
                continue
            if name in RESPONSE_NOT_RELAYED or name in listed:
                continue
            kept.append(pair)
        self.headers = kept
        self.head_done = True
        if self._head_method or status in (204, 304):
            self._mark_complete()
        else:
            self._until_close = not framed
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= _HIGH_WATER and not self._reading_paused:
            transport = self.transport
            if transport is not None:
                self._reading_paused = True
                transport.pause_reading()
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._mark_complete()

    # -- internals ---------------------------------------------------------------------------

    def _mark_complete(self) -> None:
        # Read now: the parser forgets the message's connection semantics once it moves on.
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _closed_by_peer(self, exc: Exception | None) -> None:
        if self.error is not None:
            return
        if self.head_done and not self.complete and self._until_close:
            # A response framed by the end of the connection ends here.
            self._mark_complete()
            self.error = UpstreamError("reset", "connection closed", received=True)
            return
        if not self.busy or self.complete:
            self.error = UpstreamError("reset", "connection closed")
            return
        detail = f"connection lost: {exc}" if exc else "connection closed by upstream"
        self.error = UpstreamError("reset", detail, received=self.received)
        self._wake(self.error)

    def _wake(self, error: UpstreamError) -> None:
        for waiter in (self._head_waiter, self._body_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)

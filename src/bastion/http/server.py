"""The HTTP server of ``bastion serve``: uvicorn's httptools protocol, refusing in our format.

uvicorn answers a request it cannot parse with a plain-text 400 and buffers header blocks of any
size. The protocol here bounds what it buffers before the ASGI app runs (header block → 431,
request target → 414) and answers every such refusal as RFC 9457 problem+json with a request id,
like the rest of Bastion. Proxy-header handling of the server itself stays off: only Bastion's
client-IP stage decides whom to believe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from bastion.http.problems import BastionError, problem_body
from bastion.http.upgrade import upgrade_problem

__all__ = ["BastionHttpProtocol", "CoalescingCycle", "ServerConfig", "refusal_bytes"]

_LINGER_SECONDS = 2.0
"""How long a lingering close keeps discarding the client's unread body."""
_LINGER_BYTES = 4 * 1024 * 1024
"""How much of it is discarded before closing anyway."""

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def refusal_bytes(error: BastionError) -> bytes:
    """A complete HTTP/1.1 problem response closing the connection, for refusals made before
    the ASGI app sees the request."""
    request_id = os.urandom(16).hex()
    body = problem_body(error, request_id)
    head = [
        b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error")),
        b"content-type: application/problem+json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"cache-control: no-store\r\n",
        b"x-content-type-options: nosniff\r\n",
        b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
        *(
            name.lower().encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
            for name, value in error.headers.items()
        ),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the size bounds the protocol enforces while parsing.

    The server never interprets forwarding headers itself (only the client-IP stage decides
    whom to believe) and does not announce itself in a ``Server`` header.
    """

    def __init__(
        self,
        app: Any,
        *,
        max_header_bytes: int,
        max_url_bytes: int,
        header_timeout: float = 10.0,
        **kw: Any,
    ) -> None:
        kw["proxy_headers"] = False
        kw.setdefault("server_header", False)
        super().__init__(app, http=BastionHttpProtocol, **kw)
        self.max_header_bytes = max_header_bytes
        self.max_url_bytes = max_url_bytes
        self.header_timeout = header_timeout


class BastionHttpProtocol(HttpToolsProtocol):
    """httptools protocol with bounded request heads and problem+json refusals."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # Slack for the request line and framing beyond the header-block limit proper.
        self._max_head = getattr(config, "max_header_bytes", 16384) + 1024
        self._max_url = getattr(config, "max_url_bytes", 8192)
        self._header_timeout = getattr(config, "header_timeout", 10.0)
        self._head_started = False
        self._head_deadline = 0.0
        self._head_bytes = 0
        self._header_total = 0
        self._since_body = 0
        self._host_seen = False
        self._in_head = True
        self._refusal: BastionError | None = None
        self._lingering = False
        self._lingered = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        # Slow clients (a head dribbled a byte at a time, or a connection opened and left
        # idle) would otherwise hold a connection for as long as they like. A deadline per
        # connection, checked by one sweep per server: a timer per request cost about 5 µs of
        # the gateway's per-request CPU (measured).
        if self._header_timeout > 0 and not self._head_deadline:
            self._head_deadline = self.loop.time() + self._header_timeout
            _ensure_sweep(self.server_state, self.loop, self._header_timeout)

    def _disarm_head_timer(self) -> None:
        self._head_deadline = 0.0

    def check_head_deadline(self, now: float) -> None:
        """Called by the sweep: refuse (or close) a connection whose head is overdue."""
        if self._head_deadline and now >= self._head_deadline:
            self._head_deadline = 0.0
            self._head_timed_out()

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_started:
            self._refuse(BastionError("request_timeout", "The request head took too long"))
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingered += len(data)
            if self._lingered > _LINGER_BYTES:
                self.transport.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
        else:
            self._since_body += len(data)
        super().data_received(data)
        # A head still incomplete after this many bytes is refused: it bounds what the parser
        # buffers for one request, whatever the client sends.
        if self._in_head and self._head_bytes > self._max_head + self._max_url:
            self._refuse(BastionError("request_header_too_large"))
        elif not self._in_head and self._since_body > self._max_head + self._max_url:
            # Past the head, only chunk framing and trailers are not body: a line of either
            # that never ends would be buffered without bound. The request is under way, so
            # the connection is simply closed.
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._since_body = 0
        super().on_body(body)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._arm_head_timer()
        self._in_head = True
        self._head_bytes = 0
        self._header_total = 0
        self._since_body = 0
        self._host_seen = False

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._max_url:
            self._refusal = BastionError("uri_too_long", f"The URL exceeds {self._max_url} bytes")
            raise ValueError("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_total += len(name) + len(value) + 4
        if self._header_total > self._max_head:
            self._refusal = BastionError("request_header_too_large")
            raise ValueError("header block too large")
        if not self._in_head:
            # A chunked body's trailer fields: never merged into the request's headers, where
            # they would bypass every check made on the head (and reach the upstream).
            return
        if name.lower() == b"host":
            if self._host_seen:
                self._refusal = BastionError("bad_request", "More than one Host header")
                raise ValueError("duplicate Host")
            self._host_seen = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = False
        self._disarm_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = CoalescingCycle
            cycle._closer = self.linger_close  # type: ignore[attr-defined]

    def linger_close(self) -> None:
        """Close after a response sent before the request body was read (a 413, say).

        Closing at once would make the kernel answer the client's unread body with a reset,
        and the client would likely lose the response. Like nginx's lingering close: send
        FIN after the response, discard what the client still sends for a short while (and a
        bounded amount), then close.
        """
        transport = self.transport
        if transport.is_closing() or self._lingering:
            return
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            transport.close()
            return
        self._linger()
        self.flow.resume_reading()

    def _linger(self) -> None:
        """Send FIN, discard (not parse) what the client still sends, close a little later."""
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        problem = upgrade_problem(self.scope["headers"])
        if problem is not None:
            self._refuse(problem)
            return
        super().handle_websocket_upgrade()

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()
            return
        super().eof_received()

    def send_400_response(self, msg: str) -> None:
        error = self._refusal or BastionError("bad_request", "The request is not valid HTTP/1.1")
        self._refuse(error)

    def _refuse(self, error: BastionError) -> None:
        self._refusal = None
        transport = self.transport
        if transport.is_closing() or self._lingering:
            return
        transport.write(refusal_bytes(error))
        self._linger()


_SWEEPING = "bastion_head_sweep"


def _ensure_sweep(server_state: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """Start, once per server, the periodic check of request-head deadlines."""
    if getattr(server_state, _SWEEPING, False):
        return
    setattr(server_state, _SWEEPING, True)
    interval = min(1.0, timeout / 2)

    def sweep() -> None:
        now = loop.time()
        for connection in list(server_state.connections):
            if isinstance(connection, BastionHttpProtocol):
                connection.check_head_deadline(now)
        loop.call_later(interval, sweep)

    loop.call_later(interval, sweep)


class _HeldWrites:
    """Stands in for the transport while uvicorn sends the first body message of a response
    whose head is held: the head goes out in the same send as the first body bytes, and a close
    is routed to the protocol's lingering close."""

    __slots__ = ("_closer", "_transport", "held")

    def __init__(
        self, transport: Any, held: bytes | None, *, closer: Callable[[], None] | None
    ) -> None:
        self._transport = transport
        self._closer = closer
        self.held = held

    def write(self, data: bytes) -> None:
        if self.held is None:
            self._transport.write(data)
        elif data:
            self._transport.write(self.held + data)
            self.held = None

    def release(self) -> None:
        """Write what is still held (a response with no body bytes, such as HEAD's)."""
        if self.held is not None:
            held, self.held = self.held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.release()
        if self._closer is not None:
            self._closer()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, leaner where the measurements pointed:

    - the head of a response with a known length is written together with its body (one send
      instead of two); heads of chunked (streamed) responses are written at once, so streams
      show their headers without waiting for the first chunk;
    - header fields are validated as uvicorn does, but each distinct (name, value) pair only
      once: the security headers every response carries cost two regular-expression searches
      apiece per response otherwise (about 9 µs per request for Bastion's set, measured).
    """

    _held: bytes | None = None
    _closer: Callable[[], None] | None = None

    async def send(self, message: Any) -> None:
        if not self.response_started:
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            self._start_response(message)
            return
        transport = self.transport
        held = self._held
        if held is None and self.keep_alive:
            await super().send(message)
            return
        self._held = None
        shim = _HeldWrites(transport, held, closer=self._closer)
        self.transport = shim  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            shim.release()

    def _start_response(self, message: Any) -> None:
        """uvicorn's response-head handling, writing or holding the head it builds."""
        if message["type"] != "http.response.start":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
            )
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            _check_field(name, value)
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                tokens = [token.lower().strip() for token in value.split(b",")]
                if b"close" in tokens:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        head = b"".join(content)
        if self.chunked_encoding:
            self.transport.write(head)
        else:
            self._held = head


_VALID_FIELDS: dict[tuple[bytes, bytes], None] = {}
_VALID_FIELDS_LIMIT = 4096


def _check_field(name: bytes, value: bytes) -> None:
    """uvicorn's header-field validation, remembered per distinct field."""
    key = (name, value)
    if key in _VALID_FIELDS:
        return
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    if HEADER_VALUE_RE.search(value):
        raise RuntimeError("Invalid HTTP header value.")
    if len(_VALID_FIELDS) >= _VALID_FIELDS_LIMIT:
        _VALID_FIELDS.clear()
    _VALID_FIELDS[key] = None

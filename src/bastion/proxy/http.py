"""HTTP forwarding: one client request through a pooled upstream connection, streamed both ways.

The fast path (a request without a streamed body, a response that arrives whole) runs in the
request's own coroutine: one write, one wait for the head, two ``send`` calls, no Task. A
request body that arrives in several messages is pumped to the upstream by a companion Task
while the response is read, so the upstream can answer early or echo as it reads; a response
that streams gets the same companion to notice a client that goes away.

Failures before the response head map to 502 ``upstream_unavailable`` or 504
``upstream_timeout``; after it, the client connection is cut (the server closes a response that
was not completed) and the failure is logged once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bastion.http.asgi import Message, Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.http.state import RequestState
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.proxy.client import UpstreamConnection, UpstreamError
from bastion.proxy.headers import has_body
from bastion.proxy.upstream import UpstreamTarget

__all__ = ["ClientGone", "HttpForwarder"]

logger: Any = get_logger("bastion.proxy")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHODS = {
    m: m.encode("ascii") + b" "
    for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}
_SEPARATE_WRITE = 64 * 1024
"""Body size from which the head and the body are written separately instead of joined."""
_DETAILS = {
    "connect": "The upstream service could not be reached",
    "timeout": "The upstream service did not answer in time",
    "reset": "The upstream service closed the connection",
    "protocol": "The upstream service sent an invalid response",
}


class ClientGone(Exception):
    """The client disconnected; there is nobody left to answer."""


def _consume(task: asyncio.Task[None]) -> None:
    # Reading the outcome keeps asyncio from reporting it as never retrieved.
    if not task.cancelled():
        task.exception()


class HttpForwarder:
    """Forwards HTTP requests of every route; holds no per-request state."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: RequestState,
        target: UpstreamTarget,
        trace_header: bytes | None = None,
    ) -> None:
        """Forward one request; ``trace_header`` (``traceparent: …`` lines of the client span,
        when tracing is on) is added to the upstream request head."""
        method: str = scope["method"]
        method_prefix = _METHODS.get(method) or method.encode("ascii") + b" "
        lines, content_length, transfer_encoding = target.http_headers.http_head(
            scope, state, method_prefix + target.target(scope) + b" HTTP/1.1"
        )
        if trace_header is not None:
            lines.append(trace_header)

        body = b""
        streaming = False
        chunked = False
        if has_body(content_length, transfer_encoding):
            message = await receive()
            if message["type"] != "http.request":
                return
            body = message.get("body", b"")
            streaming = message.get("more_body", False)
        if streaming:
            if content_length is not None:
                lines.append(b"content-length: " + content_length)
            else:
                lines.append(b"transfer-encoding: chunked")
                chunked = True
        elif body or content_length is not None or method in _BODY_METHODS:
            lines.append(b"content-length: %d" % len(body))
        lines.append(b"\r\n")
        head = b"\r\n".join(lines)
        if chunked and body:
            first = [head, b"%x\r\n" % len(body), body, b"\r\n"]
        elif len(body) >= _SEPARATE_WRITE:
            first = [head, body]
        else:
            first = [head + body] if body else [head]

        pool = target.pool
        conn: UpstreamConnection | None = None
        companion: asyncio.Task[None] | None = None
        started = False
        try:
            for attempt in (0, 1):
                conn = pool.acquire_idle()
                if conn is None:
                    conn = await pool.connect(target.connect_timeout)
                conn.begin(timeout=target.read_timeout, head_method=method == "HEAD")
                try:
                    conn.writelines(first)
                    if streaming:
                        companion = asyncio.get_running_loop().create_task(
                            _pump(conn, receive, chunked)
                        )
                        companion.add_done_callback(_consume)
                    else:
                        conn.request_sent = True
                    await conn.read_head()
                    break
                except UpstreamError as exc:
                    reused = conn.reused
                    pool.discard(conn)
                    conn = None
                    if (
                        attempt == 0
                        and reused
                        and not streaming
                        and exc.kind == "reset"
                        and not exc.received
                        and (method in _IDEMPOTENT or not body)
                    ):
                        # A pooled connection the upstream had already closed: the request
                        # never reached it, so sending it again on a fresh one is safe.
                        continue
                    raise
            assert conn is not None

            start: Message = {
                "type": "http.response.start",
                "status": conn.status,
                "headers": conn.headers,
            }
            if conn.complete:
                data = conn.take_body()
                if companion is not None:
                    companion.cancel()
                    companion = None
                pool.release(conn)
                conn = None
                await send(start)
                await send({"type": "http.response.body", "body": data})
                return

            if companion is None:
                companion = asyncio.get_running_loop().create_task(_watch(conn, receive))
                companion.add_done_callback(_consume)
            await send(start)
            started = True
            while True:
                data = await conn.read_body()
                if conn.complete:
                    companion.cancel()
                    companion = None
                    pool.release(conn)
                    conn = None
                    await send({"type": "http.response.body", "body": data})
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamError as exc:
            if conn is not None:
                pool.discard(conn)
                conn = None
            if companion is not None and companion.done() and not companion.cancelled():
                client_error = companion.exception()
                if isinstance(client_error, ClientGone):
                    return
                if client_error is not None:
                    raise client_error from None
            if exc.kind == "client":
                return
            self._metrics.upstream_error(target.name, exc.kind)
            if not started:
                code = "upstream_timeout" if exc.kind == "timeout" else "upstream_unavailable"
                raise BastionError(code, _DETAILS.get(exc.kind)) from None
            logger.warning(
                "upstream failed after the response started; closing the client connection",
                route=target.name,
                kind=exc.kind,
                reason=str(exc),
            )
        finally:
            if companion is not None and not companion.done():
                companion.cancel()
            if conn is not None:
                pool.discard(conn)


async def _pump(conn: UpstreamConnection, receive: Receive, chunked: bool) -> None:
    """Stream the rest of the request body to the upstream, then watch for a disconnect."""
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            if conn.complete or conn.error is not None:
                # The upstream already answered (or failed): the rest of the body is not needed.
                break
            data: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if data:
                if chunked:
                    conn.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
                else:
                    conn.write(data)
                conn.sending()
            if not more:
                if chunked:
                    conn.write(b"0\r\n\r\n")
                conn.request_sent = True
                break
            await conn.drain()
    except UpstreamError:
        return  # the forwarding coroutine meets the same failure on the connection
    except asyncio.CancelledError:
        raise
    except BaseException:
        # A stage refused the body (payload_too_large) or the client left: the upstream
        # must not receive a truncated request as if it were complete.
        conn.fail(UpstreamError("client", "request body aborted"))
        raise
    await _watch(conn, receive)


async def _watch(conn: UpstreamConnection, receive: Receive) -> None:
    """Wait for the client to disconnect and abort the upstream exchange when it does."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.fail(UpstreamError("client", "client disconnected"))
            raise ClientGone

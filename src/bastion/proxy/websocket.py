"""WebSocket proxying: an upstream WebSocket (aiohttp client) relayed to an ASGI WebSocket.

The upstream handshake happens first, with the client's subprotocols and headers (same header
rules as HTTP); only when it succeeds is the client accepted, with the subprotocol the upstream
chose. A refused or failed handshake answers the client with a 502/504 problem response where
the server supports ``websocket.http.response``, else closes the handshake with 1011 (the
error stage renders the :class:`~bastion.http.problems.BastionError` raised here).

Each direction is a reader and a writer joined by a queue of at most ``websocket_max_queue``
messages: when a consumer is slow, the queue fills and the reader stops reading the producer, so
backpressure travels end to end instead of memory growing. Close codes and reasons travel both
ways; a message over ``websocket_max_message`` ends the session with 1009 on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bastion.http.asgi import Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.http.state import RequestState
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.proxy.config import ProxyConfig
from bastion.proxy.pool import UpstreamClient
from bastion.proxy.upstream import UpstreamTarget

__all__ = ["WebSocketRelay", "relayable_close_code"]

logger: Any = get_logger("bastion.proxy")

_MESSAGE_TOO_BIG = 1009
_INTERNAL_ERROR = 1011
_GOING_AWAY = 1001
_CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the upstream's answer to a close frame."""


def relayable_close_code(code: int | None) -> int:
    """A close code that may be sent on the wire in place of ``code``.

    1005 (no status) and 1006 (abnormal closure) only describe what a peer observed; they
    become 1000 and 1001. Reserved and out-of-range codes become 1000.
    """
    if code is None or code == 1005:
        return 1000
    if code == 1006:
        return _GOING_AWAY
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1000


@dataclass(frozen=True, slots=True)
class _Close:
    """The end of one direction: close that side with ``code``/``reason``; ``also`` is the
    code for the other side when the session must end there too (1009, failures)."""

    code: int
    reason: str
    also: int | None = None


_Item = str | bytes | _Close


class WebSocketRelay:
    """Proxies WebSocket scopes; owns the aiohttp session used for upstream WebSockets."""

    __slots__ = ("_client", "_config", "_heartbeat", "_metrics", "_session")

    def __init__(self, *, config: ProxyConfig, metrics: Metrics, client: UpstreamClient) -> None:
        self._config = config
        self._client = client
        self._metrics = metrics
        self._heartbeat = config.websocket_heartbeat or None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the client session inside the running loop."""
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Cookies set by one user's upstream must never be replayed for another user.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: RequestState,
        target: UpstreamTarget,
        trace_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Relay one WebSocket; ``trace_headers`` (the client span's ``traceparent``, when
        tracing is on) are added to the upstream handshake."""
        session = self._session
        if session is None:
            raise RuntimeError("the WebSocket relay is not started")
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        rewritten = target.websocket_headers.rewrite(scope, state)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in rewritten.headers]
        headers.extend(trace_headers)
        url = URL(target.websocket_url(scope), encoded=True)
        tls = self._client.tls_context if url.scheme == "wss" else None
        try:
            async with asyncio.timeout(target.connect_timeout + target.read_timeout or None):
                ws = await session.ws_connect(
                    url,
                    protocols=tuple(scope.get("subprotocols") or ()),
                    headers=headers,
                    autoclose=True,
                    autoping=True,
                    heartbeat=self._heartbeat,
                    max_msg_size=self._config.websocket_max_message,
                    timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_TIMEOUT),
                    compress=0,
                    ssl=tls if tls is not None else True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise self._refused(target, "protocol", f"upgrade refused: {exc.status}") from None
        except TimeoutError:
            raise self._refused(target, "timeout", "handshake timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._refused(target, "connect", f"connect failed: {exc}") from None

        try:
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            session_relay = _Session(
                ws,
                receive,
                send,
                max_queue=self._config.websocket_max_queue,
                max_message=self._config.websocket_max_message,
            )
            failed = await session_relay.run()
            if failed:
                self._metrics.upstream_error(target.name, "reset")
        finally:
            if not ws.closed:
                await ws.close(code=_GOING_AWAY)

    def _refused(self, target: UpstreamTarget, kind: str, reason: str) -> BastionError:
        """Count and log a failed upstream handshake; the error stage answers the client (a
        problem response where the server supports it, else close code 1011)."""
        self._metrics.upstream_error(target.name, kind)
        logger.warning("websocket upstream failed", route=target.name, kind=kind, reason=reason)
        if kind == "timeout":
            return BastionError("upstream_timeout", "The upstream service did not answer in time")
        return BastionError(
            "upstream_unavailable", "The upstream service refused the WebSocket connection"
        )


class _Session:
    """One accepted WebSocket pair: four small tasks and two bounded queues."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        receive: Receive,
        send: Send,
        *,
        max_queue: int,
        max_message: int,
    ) -> None:
        self._ws = ws
        self._receive = receive
        self._send = send
        self._max_message = max_message
        self._to_upstream: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._to_client: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._done: asyncio.Future[tuple[int | None, int | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._client_open = True
        self._upstream_failed = False

    async def run(self) -> bool:
        """Relay until one side closes; ``True`` when the upstream side failed abnormally."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._read_client()),
            loop.create_task(self._write_upstream()),
            loop.create_task(self._read_upstream()),
            loop.create_task(self._write_client()),
        ]
        for task in tasks:
            task.add_done_callback(self._task_done)
        try:
            client_code, upstream_code = await self._done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if client_code is not None and self._client_open:
            self._client_open = False
            with contextlib.suppress(OSError):
                await self._send({"type": "websocket.close", "code": client_code})
        if upstream_code is not None and not self._ws.closed:
            await self._ws.close(code=upstream_code)
        return self._upstream_failed

    def _finish(self, client_code: int | None, upstream_code: int | None) -> None:
        if not self._done.done():
            self._done.set_result((client_code, upstream_code))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.warning("websocket relay failed", error=repr(error))
            self._finish(_INTERNAL_ERROR, _INTERNAL_ERROR)

    def _too_big(self, message: str | bytes) -> bool:
        limit = self._max_message
        size = len(message)
        if isinstance(message, str) and size <= limit < size * 4:
            size = len(message.encode("utf-8"))
        return size > limit

    async def _read_client(self) -> None:
        queue = self._to_upstream
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                item: str | bytes | None = text if text is not None else message.get("bytes")
                if item is None:
                    continue
                if self._too_big(item):
                    await queue.put(_Close(_MESSAGE_TOO_BIG, "message too big", _MESSAGE_TOO_BIG))
                    return
                await queue.put(item)
            elif kind == "websocket.disconnect":
                self._client_open = False
                code = relayable_close_code(message.get("code"))
                await queue.put(_Close(code, message.get("reason") or ""))
                return

    async def _write_upstream(self) -> None:
        queue = self._to_upstream
        ws = self._ws
        while True:
            item = await queue.get()
            try:
                if isinstance(item, _Close):
                    await ws.close(code=item.code, message=item.reason.encode("utf-8"))
                    self._finish(item.also, None)
                    return
                if isinstance(item, str):
                    await ws.send_str(item)
                else:
                    await ws.send_bytes(item)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                self._upstream_failed = True
                self._finish(_INTERNAL_ERROR, None)
                return

    async def _read_upstream(self) -> None:
        queue = self._to_client
        ws = self._ws
        while True:
            message = await ws.receive()
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
                await queue.put(message.data)
            elif kind is aiohttp.WSMsgType.CLOSE:
                reason = message.extra if isinstance(message.extra, str) else ""
                await queue.put(_Close(relayable_close_code(message.data), reason))
                return
            elif kind is aiohttp.WSMsgType.CLOSING:
                return  # this side is being closed by the relay itself
            elif kind is aiohttp.WSMsgType.ERROR:
                error = message.data
                if getattr(error, "code", None) == _MESSAGE_TOO_BIG:
                    await queue.put(_Close(_MESSAGE_TOO_BIG, "message too big"))
                else:
                    self._upstream_failed = True
                    await queue.put(_Close(_INTERNAL_ERROR, "upstream failed"))
                return
            else:  # CLOSED: the connection ended without a close frame
                self._upstream_failed = ws.close_code not in (None, 1000)
                await queue.put(_Close(_INTERNAL_ERROR, "upstream connection lost"))
                return

    async def _write_client(self) -> None:
        queue = self._to_client
        send = self._send
        while True:
            item = await queue.get()
            try:
                if isinstance(item, _Close):
                    if self._client_open:
                        self._client_open = False
                        await send(
                            {"type": "websocket.close", "code": item.code, "reason": item.reason}
                        )
                    self._finish(None, item.also)
                    return
                if isinstance(item, str):
                    await send({"type": "websocket.send", "text": item})
                else:
                    await send({"type": "websocket.send", "bytes": item})
            except OSError:
                # The client is gone; the upstream is told the other end went away.
                self._client_open = False
                self._finish(None, _GOING_AWAY)
                return

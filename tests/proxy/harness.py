"""Helpers of the gateway tests: real upstreams on loopback and an ASGI driver for the proxy.

- :func:`upstream_app` / :func:`serve_asgi`: the test upstream (inspect, echo, stream, slow,
  status, large, WebSocket echo) served by uvicorn inside the test's loop.
- :class:`RawUpstream`: a scripted TCP upstream for protocol edge cases; the script gets each
  accepted connection and reads/writes bytes itself.
- :func:`call`: drives one HTTP request through a proxy with ASGI messages and records what it
  sent back (with arrival times).
- :func:`serve_gateway`: a proxy behind uvicorn with the request-id and error stages, for tests
  that need a real client (WebSockets, concurrency).
- :func:`until`: waits for a condition for up to :data:`PATIENCE` (30 s) rather than a fixed
  pause, which a slow machine can outlast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.metrics import Metrics
from bastion.pipeline.errors import ErrorStage
from bastion.pipeline.request_id import RequestIdStage
from bastion.proxy import Proxy

PATIENCE = 30.0
"""How long a test waits for something that must happen: only what never happens fails, not
what a slow machine does late."""


async def until(check: Callable[[], bool]) -> None:
    """Wait until ``check`` holds, failing after :data:`PATIENCE`."""
    async with asyncio.timeout(PATIENCE):
        while not check():
            await asyncio.sleep(0.01)


# -- the upstream application ---------------------------------------------------------------


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _websocket_echo(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    if scope["path"] == "/ws/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    if scope["path"] == "/ws/hello":
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await send({"type": "websocket.send", "text": orjson.dumps(headers).decode()})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _last_websocket_close.append((message.get("code"), message.get("reason") or ""))
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            code = int(text.split(":", 1)[1])
            await send({"type": "websocket.close", "code": code, "reason": f"closing {code}"})
            return
        if text is not None and text.startswith("big:"):
            await send({"type": "websocket.send", "bytes": b"x" * int(text.split(":", 1)[1])})
            continue
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


_last_websocket_close: list[tuple[int | None, str]] = []
"""Close codes and reasons the upstream WebSocket echo saw from the proxy, in order."""


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The test upstream. Paths: ``/echo`` (streams the body back), ``/stream?chunks=&interval=``,
    ``/slow?delay=``, ``/status/N``, ``/large?size=``, ``/ws/...`` (WebSocket echo); anything
    else answers a JSON view of the request (method, raw path, query, headers, body size)."""
    if scope["type"] == "websocket":
        await _websocket_echo(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            if message.get("body"):
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":
        chunks = int(query.get("chunks", "3"))
        interval = float(query.get("interval", "0.1"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(chunks):
            if index:
                await asyncio.sleep(interval)
            await send(
                {"type": "http.response.body", "body": b"chunk%d\n" % index, "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await asyncio.sleep(float(query.get("delay", "1")))
        await _respond(send, 200, b"slow")
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        if status in (204, 304):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _respond(send, status, b"status %d" % status)
    elif path == "/large":
        size = int(query.get("size", "1048576"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        block = b"x" * 65536
        remaining = size
        while remaining > 0:
            part = block[: min(remaining, len(block))]
            remaining -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": remaining > 0})
    else:
        body = await _read_body(receive)
        view = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "body_size": len(body),
        }
        await _respond(
            send,
            200,
            orjson.dumps(view),
            [
                (b"content-type", b"application/json"),
                (b"x-powered-by", b"test"),
                (b"connection", b"x-upstream-hop"),
                (b"x-upstream-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
            ],
        )


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port inside the running loop."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# -- scripted raw upstreams ----------------------------------------------------------------


@dataclass
class RawRequest:
    """One request as the raw upstream read it off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class RawConnection:
    """One accepted connection of a :class:`RawUpstream`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int):
        self.reader = reader
        self.writer = writer
        self.index = index

    async def read_request(self) -> RawRequest | None:
        """The next request, or ``None`` when the client closed the connection first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        request = RawRequest(method, target, headers, b"")
        length = request.header("content-length")
        if length is not None:
            request.body = await self.reader.readexactly(int(length))
        elif request.header("transfer-encoding") == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            request.body = b"".join(chunks)
        return request

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    def reset(self) -> None:
        """Abort the connection (the peer sees a reset)."""
        self.writer.transport.abort()


Script = Callable[[RawConnection], Awaitable[None]]


class RawUpstream:
    """A TCP upstream run by a script; counts connections and keeps the requests it read."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.requests: list[RawRequest] = []
        self.closed_connections = 0
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = RawConnection(reader, writer, self.connections)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._script(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed_connections += 1
            self._tasks.discard(task)
            conn.writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def response_bytes(
    status: int = 200, body: bytes = b"ok", headers: Iterable[str] = (), *, length: bool = True
) -> bytes:
    """An HTTP/1.1 response as bytes (``Content-Length`` framed unless ``length=False``)."""
    lines = [f"HTTP/1.1 {status} Status"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- the proxy and its ASGI driver ---------------------------------------------------------


@dataclass
class Gateway:
    """A started proxy with what the tests inspect: its routes, metrics and settings."""

    proxy: Proxy
    routes: RouteTable
    metrics: Metrics
    deps: Deps

    def upstream_errors(self, route: str, kind: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bastion_upstream_errors_total", {"route": route, "kind": kind}
        )
        return value or 0.0


MakeProxy = Callable[..., Awaitable[Gateway]]


@dataclass
class Exchange:
    """What the proxy sent for one request, with the monotonic time of each message."""

    messages: list[Message] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def status(self) -> int:
        status: int = self.messages[0]["status"]
        return status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = self.messages[0]["headers"]
        return headers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def body_messages(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.body_messages)

    @property
    def complete(self) -> bool:
        bodies = self.body_messages
        return bool(bodies) and not bodies[-1].get("more_body", False)

    def json(self) -> Any:
        return orjson.loads(self.body)


def body_receive(chunks: Sequence[bytes], *, delay: float = 0.0) -> Receive:
    """A ``receive`` yielding ``chunks`` as request-body messages, then waiting forever (as a
    server does until the client disconnects)."""
    queue = list(chunks) or [b""]

    async def receive() -> Message:
        if queue:
            if delay:
                await asyncio.sleep(delay)
            data = queue.pop(0)
            return {"type": "http.request", "body": data, "more_body": bool(queue)}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def call(
    gateway: Gateway,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Sequence[tuple[bytes, bytes]] = ((b"host", b"gateway.example"),),
    body: Sequence[bytes] = (),
    raw_path: bytes | None = None,
    query: bytes = b"",
    client: tuple[str, int] | None = ("203.0.113.7", 51000),
    client_ip: str | None = None,
    scheme: str = "http",
    request_id: str = "req-1",
    principal: Any = None,
    forwarded_host: str | None = None,
    receive: Receive | None = None,
) -> Exchange:
    """Send one HTTP request through ``gateway`` and record the response messages.

    ``client_ip`` is the address the client-IP stage resolved (default: the peer); the route is
    matched like the request-id stage does.
    """
    state = RequestState(
        request_id, time.perf_counter(), client_ip or (client[0] if client else "unknown"), scheme
    )
    state.route = gateway.routes.match(path, None)
    state.principal = principal
    state.forwarded_host = forwarded_host
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": query,
        "headers": list(headers),
        "client": client,
        "server": ("127.0.0.1", 8080),
        "state": {"bastion": state},
    }
    exchange = Exchange()

    async def send(message: Message) -> None:
        exchange.messages.append(message)
        exchange.times.append(time.monotonic())

    await gateway.proxy(scope, receive or body_receive(list(body)), send)
    return exchange


def with_body_headers(length: int | None) -> list[tuple[bytes, bytes]]:
    """Request headers announcing a body (``Content-Length`` or chunked)."""
    headers = [(b"host", b"gateway.example")]
    if length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        headers.append((b"content-length", str(length).encode()))
    return headers


# -- the proxy behind a real server --------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_gateway(gateway: Gateway) -> AsyncIterator[str]:
    """Serve ``gateway`` behind uvicorn with the request-id and error stages; its base URL."""
    deps = gateway.deps
    observer = RequestObserver(deps.metrics, access_log=False)
    app = RequestIdStage(
        ErrorStage(gateway.proxy, deps=deps),
        config=deps.settings.request_id,
        deps=deps,
        observer=observer,
    )
    async with serve_asgi(app) as url:
        yield url

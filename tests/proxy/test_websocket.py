"""WebSocket proxying behind a real server: relay, subprotocols, close codes, limits, refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bastion.proxy import RouteConfig
from bastion.proxy.websocket import _Session, relayable_close_code
from proxy.harness import (
    PATIENCE,
    MakeProxy,
    RawConnection,
    RawUpstream,
    Script,
    serve_gateway,
    until,
)

RawFactory = Callable[[Script], Awaitable[RawUpstream]]
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_url(base: str, path: str) -> str:
    return "ws://" + base.removeprefix("http://") + path


async def test_text_and_binary_are_relayed(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([RouteConfig(name="ws", upstream=upstream)])
    async with serve_gateway(gateway) as front, connect(ws_url(front, "/ws/echo")) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        for index in range(50):
            await ws.send(f"message {index}")
        assert [await ws.recv() for _ in range(50)] == [f"message {i}" for i in range(50)]


async def test_subprotocol_and_headers_reach_the_upstream(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy(
        [RouteConfig(name="ws", prefix="/live", upstream=upstream, strip_prefix=True)]
    )
    async with (
        serve_gateway(gateway) as front,
        connect(
            ws_url(front, "/live/ws/hello"),
            subprotocols=["chat.v2", "chat.v1"],  # type: ignore[list-item]
            additional_headers={
                "X-Bastion-User": "forged",
                "X-Custom": "kept",
                "Origin": "https://app.example",
            },
        ) as ws,
    ):
        assert ws.subprotocol == "chat.v2"
        seen: dict[str, str] = orjson.loads(await ws.recv())
    assert seen["x-custom"] == "kept"
    assert seen["origin"] == "https://app.example"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert len(seen["x-request-id"]) > 0
    assert "x-bastion-user" not in seen
    offered = [p.strip() for p in seen["sec-websocket-protocol"].split(",")]
    assert offered == ["chat.v2", "chat.v1"]
    assert "permessage-deflate" not in seen.get("sec-websocket-extensions", "")


async def test_client_close_code_reaches_the_upstream(
    upstream: str, make_proxy: MakeProxy, websocket_closes: list[tuple[int | None, str]]
) -> None:
    gateway = await make_proxy([RouteConfig(name="ws", upstream=upstream)])
    async with serve_gateway(gateway) as front:
        async with connect(ws_url(front, "/ws/echo")) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.close(code=4001, reason="client done")
        await until(lambda: bool(websocket_closes))
    assert websocket_closes == [(4001, "client done")]


async def test_upstream_close_code_reaches_the_client(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([RouteConfig(name="ws", upstream=upstream)])
    async with serve_gateway(gateway) as front, connect(ws_url(front, "/ws/echo")) as ws:
        await ws.send("close:4002")
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4002, "closing 4002")


async def test_refused_upgrade_is_a_502_problem(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([RouteConfig(name="ws", upstream=upstream)])
    async with serve_gateway(gateway) as front:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(front, "/ws/refuse")):
                pass
    response = caught.value.response
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    body = orjson.loads(response.body or b"{}")
    assert body["code"] == "upstream_unavailable"
    assert body["request_id"] == response.headers["x-request-id"]
    assert gateway.upstream_errors("ws", "protocol") == 1


async def test_unreachable_upstream_is_a_502_problem(make_proxy: MakeProxy) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    gateway = await make_proxy([RouteConfig(name="ws", upstream=f"http://127.0.0.1:{port}")])
    async with serve_gateway(gateway) as front:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(front, "/ws/echo")):
                pass
    assert caught.value.response.status_code == 502
    assert gateway.upstream_errors("ws", "connect") == 1


async def test_oversized_client_message_closes_with_1009(
    upstream: str, make_proxy: MakeProxy, websocket_closes: list[tuple[int | None, str]]
) -> None:
    gateway = await make_proxy(
        [RouteConfig(name="ws", upstream=upstream)], websocket_max_message=1024
    )
    async with serve_gateway(gateway) as front, connect(ws_url(front, "/ws/echo")) as ws:
        await ws.send("small")
        assert await ws.recv() == "small"
        await ws.send("é" * 600)  # 600 characters, 1200 bytes
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
        await until(lambda: bool(websocket_closes))
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009
    assert websocket_closes[0][0] == 1009


async def test_oversized_upstream_message_closes_with_1009(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy(
        [RouteConfig(name="ws", upstream=upstream)], websocket_max_message=1024
    )
    async with serve_gateway(gateway) as front, connect(ws_url(front, "/ws/echo")) as ws:
        await ws.send("big:1000")
        assert len(await ws.recv()) == 1000
        await ws.send("big:5000")
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009


async def test_upstream_vanishing_closes_the_client_with_1011(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        key = request.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        await conn.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await asyncio.sleep(0.1)
        conn.reset()

    server = await raw_upstream(script)
    gateway = await make_proxy([RouteConfig(name="ws", upstream=server.url)])
    async with serve_gateway(gateway) as front, connect(ws_url(front, "/ws")) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1011
    assert gateway.upstream_errors("ws", "reset") == 1


@pytest.mark.parametrize(
    ("code", "relayed"),
    [
        (1000, 1000),
        (1001, 1001),
        (1005, 1000),
        (1006, 1001),
        (1011, 1011),
        (1015, 1000),
        (2999, 1000),
        (3000, 3000),
        (4001, 4001),
        (5000, 1000),
        (None, 1000),
    ],
)
def test_relayable_close_code(code: int | None, relayed: int) -> None:
    assert relayable_close_code(code) == relayed


class _FloodingUpstream:
    """A stand-in upstream WebSocket that always has another message ready."""

    closed = False
    close_code = None

    def __init__(self) -> None:
        self.reads = 0

    async def receive(self) -> aiohttp.WSMessage:
        self.reads += 1
        await asyncio.sleep(0)
        return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, f"m{self.reads}", None)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


async def test_a_slow_client_stalls_reading_from_the_upstream() -> None:
    upstream = _FloodingUpstream()
    delivered: list[Any] = []
    release = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await release.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        delivered.append(message)
        await asyncio.Event().wait()  # the client never reads: every send blocks

    session = _Session(upstream, receive, send, max_queue=4, max_message=1024)  # type: ignore[arg-type]
    task = asyncio.create_task(session.run())
    await until(lambda: bool(delivered))
    await asyncio.sleep(0.2)  # time for the reader to run ahead, were it unbounded
    # One message is stuck in send, four wait in the queue, one is held by the blocked reader.
    assert len(delivered) == 1
    assert upstream.reads <= 4 + 2
    release.set()
    await asyncio.wait_for(task, PATIENCE)
    assert upstream.closed

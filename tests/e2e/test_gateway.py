"""The gateway end to end: ``bastion serve`` in front of the demo upstream, over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from e2e.processes import Processes, ServerProcess, free_port

pytestmark = pytest.mark.e2e

GATEWAY_CONFIG = """
[proxy]
read_timeout = "2s"

[limits]
max_body_bytes = "64MiB"
"""


@pytest.fixture(scope="module")
def demo(module_processes: Processes) -> ServerProcess:
    return module_processes.demo()


@pytest.fixture(scope="module")
def gateway(module_processes: Processes, demo: ServerProcess) -> Iterator[ServerProcess]:
    process = module_processes.bastion("--upstream", demo.url, config=GATEWAY_CONFIG)
    yield process
    assert "Traceback" not in process.output()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100), auto_decompress=True
    ) as client:
        yield client


def assert_problem(body: bytes, code: str, status: int, request_id: str | None) -> None:
    problem = orjson.loads(body)
    assert problem["type"] == f"https://bastion.dev/problems/{code}"
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["request_id"] == request_id
    assert "Traceback" not in body.decode()


async def test_request_passes_with_a_request_id(
    gateway: ServerProcess, session: aiohttp.ClientSession
) -> None:
    async with session.get(gateway.url + "/hello") as response:
        assert response.status == 200
        assert await response.text() == "Hello, world!"
        assert response.headers.get("X-Request-ID")
        assert len(response.headers.getall("Date")) == 1


async def _raw_get(url: str, path: str, headers: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request with exactly ``headers``, read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{n}: {v}" for n, v in headers)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_hop_by_hop_and_identity_headers_never_reach_the_upstream(
    gateway: ServerProcess,
) -> None:
    head, body = await _raw_get(
        gateway.url,
        "/headers",
        [
            ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-Bastion-User", "admin"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Request-ID", "e2e-hop-test"),
            ("Accept-Encoding", "identity"),
        ],
    )
    assert head.startswith(b"HTTP/1.1 200")
    seen = {name.lower(): value for name, value in orjson.loads(body)["raw_headers"]}
    for name in ("connection", "x-secret-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen, name
    assert "x-bastion-user" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-request-id"] == "e2e-hop-test"
    assert seen["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert b"x-request-id: e2e-hop-test" in head.lower()


async def test_stream_chunks_arrive_separately(
    gateway: ServerProcess, session: aiohttp.ClientSession
) -> None:
    arrivals: list[float] = []
    received = b""
    async with session.get(
        gateway.url + "/stream",
        # Half a second apart: a gateway stalled for a moment on a slow machine still relays
        # the chunks one by one rather than two in one read.
        params={"chunks": "4", "interval": "0.5"},
        headers={"Accept-Encoding": "identity"},
    ) as response:
        assert response.status == 200
        async for data in response.content.iter_any():
            arrivals.append(time.monotonic())
            received += data
    assert received.count(b"chunk") == 4
    assert len(arrivals) >= 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(1 for gap in gaps if gap >= 0.25) >= 3


async def test_post_echo_of_20_mib_chunked(
    gateway: ServerProcess, session: aiohttp.ClientSession
) -> None:
    block = b"".join(b"bastion-e2e-%08d\n" % i for i in range(4096))  # 86 KiB of text
    total = 20 * 1024 * 1024
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        remaining = total
        while remaining:
            part = block[: min(remaining, len(block))]
            remaining -= len(part)
            sent.update(part)
            yield part

    received = hashlib.sha256()
    size = 0
    async with session.post(
        gateway.url + "/echo",
        data=body(),
        headers={"Content-Type": "application/octet-stream", "Accept-Encoding": "identity"},
    ) as response:
        assert response.status == 200
        async for data in response.content.iter_chunked(256 * 1024):
            received.update(data)
            size += len(data)
    assert size == total
    assert received.hexdigest() == sent.hexdigest()


async def test_websocket_echo_text_binary_and_close_codes(gateway: ServerProcess) -> None:
    async with connect(gateway.ws_url + "/ws/echo", subprotocols=["chat"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat"
        await ws.send("hello through the gateway")
        assert await ws.recv() == "hello through the gateway"
        await ws.send(b"\x00\xffbinary")
        assert await ws.recv() == b"\x00\xffbinary"
        await ws.send("close:4002:upstream says bye")
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4002, "upstream says bye")

    async with connect(gateway.ws_url + "/ws/echo") as ws:
        await ws.send("still there?")
        assert await ws.recv() == "still there?"
        await ws.close(code=4001, reason="client says bye")
    assert ws.close_code == 4001


async def test_upstream_slower_than_the_read_timeout_is_504(
    gateway: ServerProcess, session: aiohttp.ClientSession
) -> None:
    # (The upstream would answer after 10 s: a 504 is the read timeout's.)
    async with session.get(gateway.url + "/slow", params={"delay": "10"}) as response:
        body = await response.read()
        assert response.status == 504
        assert response.headers["Content-Type"] == "application/problem+json"
        request_id = response.headers["X-Request-ID"]
    assert_problem(body, "upstream_timeout", 504, request_id)


async def test_hundred_concurrent_clients(
    gateway: ServerProcess, session: aiohttp.ClientSession
) -> None:
    async def one(index: int) -> tuple[int, str | None]:
        async with session.get(gateway.url + "/hello", params={"n": str(index)}) as response:
            await response.read()
            return response.status, response.headers.get("X-Request-ID")

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert [status for status, _ in results] == [200] * 100
    assert len({request_id for _, request_id in results}) == 100


async def test_upstream_down_is_a_502_problem(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    gateway = processes.bastion("--upstream", f"http://127.0.0.1:{free_port()}")
    async with session.get(gateway.url + "/anything") as response:
        body = await response.read()
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/problem+json"
        request_id = response.headers["X-Request-ID"]
    assert_problem(body, "upstream_unavailable", 502, request_id)

    with pytest.raises(InvalidStatus) as caught:
        async with connect(gateway.ws_url + "/ws/echo"):
            pass
    assert caught.value.response.status_code == 502

    output = gateway.stop()
    assert "Traceback" not in output

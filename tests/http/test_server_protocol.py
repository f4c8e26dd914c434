"""Refusals made by the HTTP server before the pipeline runs are problem+json too."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from bastion.http.asgi import Receive, Scope, Send
from bastion.http.server import ServerConfig
from problem_assertions import assert_problem_body

STREAM_GATE: asyncio.Event | None = None


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/sized":
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else b"sized"}
        )
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert STREAM_GATE is not None
        await STREAM_GATE.wait()
        await send({"type": "http.response.body", "body": b"late"})
        return
    if scope["path"] == "/seen":
        while (await receive()).get("more_body"):
            pass
        names = b",".join(sorted(name for name, _ in scope["headers"]))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(names)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": names})
        return
    if scope["path"] == "/inject":
        headers = [(b"x-note", b"ok\r\nset-cookie: stolen=1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"never"})
        return
    if scope["path"] == "/close":
        headers = [(b"content-length", b"3"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"bye"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    config = ServerConfig(
        hello,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="critical",
        max_header_bytes=2048,
        max_url_bytes=512,
        header_timeout=0.5,
    )
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    while not instance.started:
        await asyncio.sleep(0.01)
    yield port
    instance.should_exit = True
    await task


async def exchange(port: int, raw: bytes, *, chunked_send: int = 0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if chunked_send:
            for start in range(0, len(raw), chunked_send):
                writer.write(raw[start : start + chunked_send])
                await writer.drain()
        else:
            writer.write(raw)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize(
    ("id_", "raw", "status", "code"),
    [
        ("garbage", b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (
            "bad-header-name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
            400,
            "bad_request",
        ),
        ("long-url", b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            "big-header",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 4000 + b"\r\n\r\n",
            431,
            "request_header_too_large",
        ),
        (
            "many-headers",
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(60))
            + b"\r\n",
            431,
            "request_header_too_large",
        ),
        (
            "conflicting-lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
    ],
)
async def test_refusals_are_problems(
    server: int, id_: str, raw: bytes, status: int, code: str
) -> None:
    got_status, headers, body = parse(await exchange(server, raw))
    assert got_status == status
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    data = assert_problem_body(body, status, code)
    assert data["request_id"] == headers["x-request-id"]


async def test_endless_header_is_cut_off(server: int) -> None:
    """A head that never ends is refused once it passes the bound, not buffered forever."""
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"v" * 200_000
    response = await exchange(server, raw, chunked_send=4096)
    if response:  # the server may reset the connection while we still write
        assert parse(response)[0] == 431


async def test_normal_requests_and_keepalive(server: int) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(raw)
    await writer.drain()
    data = b""
    while data.count(b"hello") < 3:
        data += await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert data.count(b"HTTP/1.1 200") == 3
    assert b"server:" not in data.lower()


async def test_body_bytes_do_not_count_as_head(server: int) -> None:
    body = b"x" * 100_000
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    status, _, _ = parse(await exchange(server, raw))
    assert status == 200


async def test_sized_response_head_and_body_in_one_write(server: int) -> None:
    raw = b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(raw)
    await writer.drain()
    first = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    # Head and body arrive together: one send by the server.
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"\r\n\r\nsized")


async def test_head_response_is_written_without_body(server: int) -> None:
    raw = b"HEAD /sized HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, body = parse(await exchange(server, raw))
    assert status == 200
    assert headers["content-length"] == "5"
    assert body == b""


async def test_streamed_head_is_not_held_back(server: int) -> None:
    global STREAM_GATE
    STREAM_GATE = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"transfer-encoding: chunked" in head
    STREAM_GATE.set()
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    writer.close()
    assert b"late" in rest


async def test_connection_close_response_is_complete(server: int) -> None:
    raw = b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, body = parse(await exchange(server, raw))
    assert (status, body) == (200, b"bye")
    assert headers["connection"] == "close"


async def test_pipelined_sized_responses_in_order(server: int) -> None:
    raw = b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(raw)
    await writer.drain()
    data = b""
    while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"0\r\n\r\n"):
        data += await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert data.index(b"sized") < data.rindex(b"sized") < data.index(b"hello")


async def test_header_injection_from_the_app_is_refused(server: int) -> None:
    response = await exchange(server, b"GET /inject HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"stolen" not in response
    assert b"never" not in response


async def test_trailers_never_become_request_headers(server: int) -> None:
    raw = (
        b"POST /seen HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n"
        b"Authorization: Bearer injected\r\nX-Smuggled: 1\r\n\r\n"
    )
    status, _, body = parse(await exchange(server, raw))
    assert status == 200
    assert b"authorization" not in body
    assert b"x-smuggled" not in body
    assert b"host" in body


async def test_duplicate_host_refused(server: int) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: internal.example\r\n\r\n"
    status, headers, body = parse(await exchange(server, raw))
    assert status == 400
    assert_problem_body(body, 400, "bad_request")
    assert headers["connection"] == "close"


async def test_endless_trailer_line_is_cut_off(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"POST /seen HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: "
    )
    closed = False
    try:
        for _ in range(200):  # at most 6.4 MB; the server closes long before
            writer.write(b"a" * 32768)
            await asyncio.wait_for(writer.drain(), 5)
            if reader.at_eof():
                closed = True
                break
            await asyncio.sleep(0)
        else:
            closed = await asyncio.wait_for(reader.read(), 5) == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    assert closed


async def test_slow_head_gets_408(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status, headers, body = parse(response)
    assert status == 408
    assert headers["connection"] == "close"
    assert_problem_body(body, 408, "request_timeout")


async def test_idle_new_connection_is_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_timer_does_not_cut_a_served_connection(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    for _ in range(3):  # requests spread over longer than the head timeout
        writer.write(b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.readuntil(b"sized"), 5)
        assert data.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.3)
    writer.close()


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        (b"Sec-WebSocket-Protocol: a b\r\n", 400, "bad_request"),
        (b"X-Pad: " + b"p" * 9000 + b"\r\n", 431, "request_header_too_large"),
    ],
)
async def test_malformed_handshakes_are_problems(
    server: int, extra: bytes, status: int, code: str
) -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )
    got_status, headers, body = parse(await exchange(server, raw))
    assert got_status == status
    assert headers["content-type"] == "application/problem+json"
    assert_problem_body(body, status, code)


async def test_unsupported_websocket_version_is_426(server: int) -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    status, headers, body = parse(await exchange(server, raw))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert_problem_body(body, 426, "upgrade_required")

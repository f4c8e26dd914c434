"""HTTP forwarding against real upstreams: streaming, framing, pooling, errors and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from bastion.http.principal import Principal
from bastion.http.problems import BastionError
from bastion.proxy import RouteConfig
from proxy.harness import (
    PATIENCE,
    Gateway,
    MakeProxy,
    RawConnection,
    RawUpstream,
    Script,
    body_receive,
    call,
    response_bytes,
    until,
    with_body_headers,
)

RawFactory = Callable[[Script], Awaitable[RawUpstream]]


def route(upstream: str, **options: object) -> RouteConfig:
    return RouteConfig(name=str(options.pop("name", "api")), upstream=upstream, **options)  # type: ignore[arg-type]


async def test_get_reaches_the_upstream_with_the_gateway_headers(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([route(upstream)])
    exchange = await call(
        gateway,
        "GET",
        "/inspect",
        headers=[
            (b"host", b"gw.example"),
            (b"x-bastion-user", b"admin"),
            (b"connection", b"x-drop-me"),
            (b"x-drop-me", b"1"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"x-request-id", b"from-client"),
            (b"accept", b"application/json"),
        ],
        query=b"a=1&b=two",
    )
    assert exchange.status == 200
    assert exchange.complete
    view = exchange.json()
    seen = dict((n, v) for n, v in view["headers"])
    assert view["raw_path"] == "/inspect"
    assert view["query"] == "a=1&b=two"
    assert seen["host"] == upstream.removeprefix("http://")
    assert seen["accept"] == "application/json"
    assert seen["x-forwarded-for"] == "203.0.113.7"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "gw.example"
    assert seen["forwarded"] == "for=203.0.113.7;proto=http;host=gw.example"
    assert seen["x-request-id"] == "req-1"
    assert "x-bastion-user" not in seen
    assert "x-drop-me" not in seen
    assert "connection" not in seen


async def test_response_hop_by_hop_headers_are_removed(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([route(upstream)])
    exchange = await call(gateway, "GET", "/inspect")
    names = {name for name, _ in exchange.headers}
    assert b"content-type" in names
    assert b"content-length" in names
    assert not names & {
        b"connection",
        b"keep-alive",
        b"x-upstream-hop",
        b"transfer-encoding",
        b"date",
    }


async def test_identity_of_the_verified_principal_reaches_the_upstream(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([route(upstream)])
    principal = Principal(subject="u-1", method="bearer", roles=("admin",))
    exchange = await call(
        gateway,
        "GET",
        "/inspect",
        headers=[(b"host", b"gw"), (b"x-bastion-user", b"forged")],
        principal=principal,
    )
    seen = [(n, v) for n, v in exchange.json()["headers"]]
    assert ("x-bastion-user", "u-1") in seen
    assert ("x-bastion-user", "forged") not in seen
    assert ("x-bastion-roles", "admin") in seen


async def test_raw_path_is_forwarded_without_reencoding(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([route(upstream)])
    exchange = await call(gateway, "GET", "/a/b", raw_path=b"/a%2Fb", query=b"x=%2F%20")
    view = exchange.json()
    assert view["raw_path"] == "/a%2Fb"
    assert view["query"] == "x=%2F%20"


async def test_prefix_is_stripped_and_base_path_prepended(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy(
        [
            route(upstream, name="api", prefix="/api", strip_prefix=True),
            route(upstream + "/base", name="v2", prefix="/v2", strip_prefix=True),
            route(upstream, name="keep", prefix="/keep"),
        ]
    )
    assert (await call(gateway, "GET", "/api/inspect")).json()["raw_path"] == "/inspect"
    assert (await call(gateway, "GET", "/v2/x/y")).json()["raw_path"] == "/base/x/y"
    assert (await call(gateway, "GET", "/keep/inspect")).json()["raw_path"] == "/keep/inspect"


async def test_ipv6_upstream(make_proxy: MakeProxy) -> None:
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await RawConnection(reader, writer, 1).read_request()
        seen.append(request.header("host") if request else None)
        writer.write(response_bytes(200, b"v6"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gateway = await make_proxy([route(f"http://[::1]:{port}")])
        assert (await call(gateway, "GET", "/")).body == b"v6"
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [f"[::1]:{port}"]


async def test_no_route_is_not_found(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([route(upstream, prefix="/api")])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/elsewhere")
    assert caught.value.code == "not_found"


async def test_one_message_body_is_sent_with_content_length(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        seen.append((request.header("content-length"), request.header("transfer-encoding")))
        await conn.write(response_bytes(200, request.body))
        await conn.read_request()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(
        gateway, "POST", "/upload", headers=with_body_headers(None), body=[b"hello world"]
    )
    assert exchange.body == b"hello world"
    assert seen == [("11", None)]


async def test_streamed_body_without_length_is_chunked_upstream(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    seen: list[tuple[str | None, bytes]] = []

    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        seen.append((request.header("transfer-encoding"), request.body))
        await conn.write(response_bytes(200, b"%d" % len(request.body)))
        await conn.read_request()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    chunks = [b"a" * 1000, b"b" * 2000, b"c" * 3000]
    exchange = await call(gateway, "POST", "/up", headers=with_body_headers(None), body=chunks)
    assert exchange.body == b"6000"
    assert seen == [("chunked", b"".join(chunks))]


async def test_streamed_body_with_length_keeps_it(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    seen: list[tuple[str | None, str | None, int]] = []

    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        seen.append(
            (
                request.header("content-length"),
                request.header("transfer-encoding"),
                len(request.body),
            )
        )
        await conn.write(response_bytes(204, b""))
        await conn.read_request()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(
        gateway, "PUT", "/up", headers=with_body_headers(30), body=[b"x" * 10, b"y" * 20]
    )
    assert exchange.status == 204
    assert seen == [("30", None, 30)]


async def test_echo_streams_a_large_body_both_ways(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([route(upstream)])
    chunk = bytes(range(256)) * 256  # 64 KiB
    chunks = [chunk] * 64  # 4 MiB
    exchange = await call(gateway, "POST", "/echo", headers=with_body_headers(None), body=chunks)
    assert exchange.status == 200
    assert exchange.complete
    assert exchange.body == b"".join(chunks)
    # Relayed as it arrived, never as one buffered body.
    assert len(exchange.body_messages) > 4
    assert max(len(m.get("body", b"")) for m in exchange.body_messages) <= 1024 * 1024


async def test_large_response_is_streamed_in_pieces(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([route(upstream)])
    size = 8 * 1024 * 1024
    exchange = await call(gateway, "GET", "/large", query=b"size=%d" % size)
    assert exchange.header(b"content-length") == str(size).encode()
    assert len(exchange.body) == size
    assert len(exchange.body_messages) > 8


async def test_stream_chunks_arrive_separately_in_time(
    upstream: str, make_proxy: MakeProxy
) -> None:
    gateway = await make_proxy([route(upstream)])
    exchange = await call(gateway, "GET", "/stream", query=b"chunks=3&interval=0.15")
    pieces = [
        (m.get("body", b""), t) for m, t in zip(exchange.messages, exchange.times, strict=True)
    ]
    data = [(body, t) for body, t in pieces[1:] if body]
    assert [body for body, _ in data] == [b"chunk0\n", b"chunk1\n", b"chunk2\n"]
    assert data[1][1] - data[0][1] >= 0.1
    assert data[2][1] - data[1][1] >= 0.1
    assert exchange.complete


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses(upstream: str, make_proxy: MakeProxy, status: int) -> None:
    gateway = await make_proxy([route(upstream)])
    exchange = await call(gateway, "GET", f"/status/{status}")
    assert exchange.status == status
    assert exchange.body == b""
    assert exchange.complete
    # The connection is still usable afterwards.
    assert (await call(gateway, "GET", "/status/201")).body == b"status 201"


async def test_head_response_has_no_body_and_the_connection_is_reused(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            if request.method == "HEAD":
                await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                await conn.write(response_bytes(200, b"after head"))

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    head = await call(gateway, "HEAD", "/thing")
    assert head.status == 200
    assert head.header(b"content-length") == b"1234"
    assert head.body == b""
    assert head.complete
    after = await call(gateway, "GET", "/thing")
    assert after.body == b"after head"
    assert server.connections == 1


async def test_interim_responses_are_skipped(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await conn.write(response_bytes(201, b"created"))
        await conn.read_request()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(gateway, "POST", "/things", headers=with_body_headers(2), body=[b"{}"])
    assert exchange.status == 201
    assert exchange.body == b"created"
    assert exchange.header(b"link") is None


async def test_expect_continue_is_answered_by_the_gateway(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    seen: list[str | None] = []

    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        seen.append(request.header("expect"))
        await conn.write(response_bytes(200, request.body))

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    headers = [*with_body_headers(4), (b"expect", b"100-continue")]
    exchange = await call(gateway, "POST", "/x", headers=headers, body=[b"data"])
    assert exchange.body == b"data"
    assert seen == [None]


async def test_body_read_until_close(raw_upstream: RawFactory, make_proxy: MakeProxy) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        await conn.write(b"part one, ")
        await asyncio.sleep(0.05)
        await conn.write(b"part two")
        await conn.close()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(gateway, "GET", "/eof")
    assert exchange.status == 200
    assert exchange.body == b"part one, part two"
    assert exchange.complete
    assert (
        gateway.proxy.client.pool("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1])).idle_count
        == 0
    )


async def test_chunked_response_is_relayed(raw_upstream: RawFactory, make_proxy: MakeProxy) -> None:
    async def script(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await asyncio.sleep(0.05)
            await conn.write(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    first = await call(gateway, "GET", "/c")
    second = await call(gateway, "GET", "/c")
    for exchange in (first, second):
        assert exchange.body == b"hello world"
        assert exchange.complete
        assert exchange.header(b"transfer-encoding") is None
        assert exchange.header(b"x-trailer") is None
    assert server.connections == 1


async def test_keep_alive_connections_are_reused(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.write(response_bytes(200, b"conn %d" % conn.index))

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    bodies = [(await call(gateway, "GET", "/")).body for _ in range(10)]
    assert bodies == [b"conn 1"] * 10
    assert server.connections == 1

    # Concurrent requests open more connections; they are all kept (pool_size allows) and reused.
    results = await asyncio.gather(*(call(gateway, "GET", "/") for _ in range(5)))
    assert all(r.status == 200 for r in results)
    opened = server.connections
    await asyncio.gather(*(call(gateway, "GET", "/") for _ in range(5)))
    assert server.connections == opened


async def test_pool_size_bounds_idle_connections(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    # Every answer waits until all six requests arrived, so none frees a connection another
    # could reuse (a fixed delay could run out before a slow machine sent the sixth).
    arrived = 0
    all_arrived = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        nonlocal arrived
        while await conn.read_request() is not None:
            arrived += 1
            if arrived == 6:
                all_arrived.set()
            await all_arrived.wait()
            await conn.write(response_bytes(200, b"ok"))

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)], pool_size=2)
    await asyncio.gather(*(call(gateway, "GET", "/") for _ in range(6)))
    assert server.connections == 6
    port = int(server.url.rsplit(":", 1)[1])
    assert gateway.proxy.client.pool("http", "127.0.0.1", port).idle_count == 2
    await until(lambda: server.closed_connections == 4)


async def test_idle_connections_expire_after_the_keepalive_timeout(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.write(response_bytes(200, b"ok"))

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)], keepalive_timeout="200ms")
    await call(gateway, "GET", "/")
    assert server.closed_connections == 0
    await until(lambda: server.closed_connections > 0)  # swept about once a second
    assert server.closed_connections == 1
    assert (await call(gateway, "GET", "/")).status == 200
    assert server.connections == 2


async def test_connection_close_from_upstream_is_honoured(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(response_bytes(200, b"bye", ["Connection: close"]))
        await conn.close()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    assert (await call(gateway, "GET", "/")).body == b"bye"
    assert (await call(gateway, "GET", "/")).body == b"bye"
    assert server.connections == 2


def _stale_script(fail_on: set[int]) -> Script:
    """Connection 1 answers once, then drops the next request unanswered (the race where a
    pooled connection is closed by the upstream just as it is reused)."""

    async def script(conn: RawConnection) -> None:
        served = 0
        while (request := await conn.read_request()) is not None:
            if conn.index in fail_on and served == 1:
                conn.reset()
                return
            served += 1
            await conn.write(
                response_bytes(200, b"%s on %d" % (request.method.encode(), conn.index))
            )

    return script


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_stale_pooled_connection_is_retried_for_idempotent_requests(
    raw_upstream: RawFactory, make_proxy: MakeProxy, method: str
) -> None:
    server = await raw_upstream(_stale_script({1}))
    gateway = await make_proxy([route(server.url)])
    assert (await call(gateway, method, "/")).body == f"{method} on 1".encode()
    retried = await call(gateway, method, "/")
    assert retried.status == 200
    assert retried.body == f"{method} on 2".encode()
    assert server.connections == 2


async def test_bodyless_post_is_retried_on_a_stale_connection(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    server = await raw_upstream(_stale_script({1}))
    gateway = await make_proxy([route(server.url)])
    await call(gateway, "POST", "/")
    assert (await call(gateway, "POST", "/")).body == b"POST on 2"


async def test_post_with_a_body_is_never_retried(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    server = await raw_upstream(_stale_script({1}))
    gateway = await make_proxy([route(server.url)])
    await call(gateway, "GET", "/")
    with pytest.raises(BastionError) as caught:
        await call(gateway, "POST", "/", headers=with_body_headers(4), body=[b"data"])
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.status == 502
    assert server.connections == 1
    assert gateway.upstream_errors("api", "reset") == 1


async def test_a_fresh_connection_failing_is_not_retried(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        conn.reset()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/")
    assert caught.value.code == "upstream_unavailable"
    assert server.connections == 1


async def _refused_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_connection_refused_is_502(make_proxy: MakeProxy) -> None:
    port = await _refused_port()
    gateway = await make_proxy([route(f"http://127.0.0.1:{port}")])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/")
    assert (caught.value.code, caught.value.status) == ("upstream_unavailable", 502)
    assert "127.0.0.1" not in caught.value.detail
    assert gateway.upstream_errors("api", "connect") == 1


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen queue is full, so new connection attempts are never answered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


async def test_connect_timeout_is_502(make_proxy: MakeProxy, unanswered_port: int) -> None:
    gateway = await make_proxy(
        [route(f"http://127.0.0.1:{unanswered_port}", connect_timeout="200ms")]
    )
    started = time.monotonic()
    # The gateway gives up, not the operating system (whose connect waits for minutes).
    with pytest.raises(BastionError) as caught:
        async with asyncio.timeout(PATIENCE):
            await call(gateway, "GET", "/")
    assert time.monotonic() - started >= 0.2
    assert (caught.value.code, caught.value.status) == ("upstream_unavailable", 502)
    assert gateway.upstream_errors("api", "connect") == 1


async def test_slow_response_head_is_504(upstream: str, make_proxy: MakeProxy) -> None:
    gateway = await make_proxy([route(upstream, read_timeout="300ms")])
    started = time.monotonic()
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/slow", query=b"delay=2")
    elapsed = time.monotonic() - started
    assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)
    assert elapsed >= 0.3  # (an answer after 2 s would have been relayed: no upper bound)
    assert gateway.upstream_errors("api", "timeout") == 1


async def test_proxy_read_timeout_applies_without_route_override(
    upstream: str, make_proxy: MakeProxy
) -> None:
    # A second to answer: a fast answer cannot run out of it on a slow machine, as one could
    # of 200 ms (a stalled loop fires the timeout with the answer already there).
    gateway = await make_proxy([route(upstream)], read_timeout="1s")
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/slow", query=b"delay=3")
    assert caught.value.code == "upstream_timeout"
    assert (await call(gateway, "GET", "/slow", query=b"delay=0")).body == b"slow"


async def test_stalled_body_after_the_head_cuts_the_response(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await asyncio.sleep(5)

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url, read_timeout="200ms")])
    exchange = await call(gateway, "GET", "/")
    assert exchange.status == 200
    assert exchange.body == b"first"
    assert not exchange.complete
    assert gateway.upstream_errors("api", "timeout") == 1


async def test_reset_mid_body_cuts_the_response(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await asyncio.sleep(0.05)
        conn.reset()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(gateway, "GET", "/")
    assert exchange.status == 200
    assert len(exchange.body) == 100
    assert not exchange.complete
    assert gateway.upstream_errors("api", "reset") == 1


async def test_reset_before_the_head_is_502(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 O")
        conn.reset()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/")
    assert caught.value.code == "upstream_unavailable"
    assert gateway.upstream_errors("api", "reset") == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not HTTP"),
        pytest.param(b"HTTP/1.1 799 Odd\r\nContent-Length: 0\r\n\r\n", id="status over 599"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n", id="huge head"
        ),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="unasked upgrade"),
    ],
)
async def test_unacceptable_response_heads_are_502_protocol(
    raw_upstream: RawFactory, make_proxy: MakeProxy, response: bytes
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(response)
        await asyncio.sleep(1)

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    with pytest.raises(BastionError) as caught:
        await call(gateway, "GET", "/")
    assert caught.value.code == "upstream_unavailable"
    assert gateway.upstream_errors("api", "protocol") == 1


async def test_payload_too_large_mid_stream_aborts_the_upstream_request(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    outcome: list[str] = []

    async def script(conn: RawConnection) -> None:
        try:
            request = await conn.read_request()
        except (asyncio.IncompleteReadError, ConnectionError):
            request = None
        outcome.append("complete request" if request is not None else "aborted")

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    refusal = BastionError("payload_too_large", "Body over the limit")
    sent = 0

    async def receive() -> dict[str, object]:
        nonlocal sent
        sent += 1
        if sent <= 2:
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}
        await asyncio.sleep(0.05)
        raise refusal

    with pytest.raises(BastionError) as caught:
        await call(gateway, "POST", "/upload", headers=with_body_headers(None), receive=receive)
    assert caught.value is refusal
    await until(lambda: bool(outcome))
    assert outcome == ["aborted"]
    assert gateway.upstream_errors("api", "reset") == 0


async def test_payload_too_large_on_the_first_message_never_connects(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    refusal = BastionError("payload_too_large")

    async def receive() -> dict[str, object]:
        raise refusal

    with pytest.raises(BastionError) as caught:
        await call(gateway, "POST", "/upload", headers=with_body_headers(99), receive=receive)
    assert caught.value is refusal
    assert server.connections == 0


async def test_early_response_stops_the_body_upload(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await conn.write(response_bytes(413, b"too big", ["Connection: close"]))
        await conn.close()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    exchange = await call(
        gateway,
        "POST",
        "/upload",
        headers=with_body_headers(None),
        receive=body_receive([b"x" * 1000] * 50, delay=0.01),
    )
    assert exchange.status == 413
    assert exchange.body == b"too big"
    assert exchange.complete


async def test_client_disconnect_aborts_a_streaming_upstream(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    upstream_saw_close = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                if conn.writer.transport.is_closing():
                    break
                await conn.write(b"5\r\ntick\n\r\n")
                await asyncio.sleep(0.02)
        if conn.writer.transport.is_closing():
            upstream_saw_close.set()

    server = await raw_upstream(script)
    gateway = await make_proxy([route(server.url)])
    disconnect = asyncio.Event()
    calls = 0

    async def receive() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(call(gateway, "GET", "/ticks", receive=receive))
    await asyncio.sleep(0.1)
    disconnect.set()
    exchange = await asyncio.wait_for(task, PATIENCE)
    assert not exchange.complete
    await asyncio.wait_for(upstream_saw_close.wait(), PATIENCE)
    assert gateway.upstream_errors("api", "reset") == 0


async def test_hundred_concurrent_requests(upstream: str, make_proxy: MakeProxy) -> None:
    gateway: Gateway = await make_proxy([route(upstream)])
    results = await asyncio.gather(
        *(call(gateway, "GET", "/inspect", request_id=f"r{i}") for i in range(100))
    )
    assert [r.status for r in results] == [200] * 100
    ids = {dict((n, v) for n, v in r.json()["headers"])["x-request-id"] for r in results}
    assert ids == {f"r{i}" for i in range(100)}


async def test_slow_upload_does_not_use_up_the_read_timeout(
    raw_upstream: RawFactory, make_proxy: MakeProxy
) -> None:
    """The read timeout is the upstream's time to answer: a body still arriving (slowly, but
    making progress) restarts it."""

    async def script(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.write(response_bytes(200, b"%d" % len(request.body)))
        await conn.read_request()

    server = await raw_upstream(script)
    # Gaps of half the timeout leave room for a stalled loop, which fires the timeout and the
    # next chunk's delay together (gaps of 150 ms in a 300 ms timeout left too little).
    gateway = await make_proxy([route(server.url, read_timeout="1s")])
    chunks = [b"x" * 10] * 4  # 4 chunks 0.5 s apart: 2 s in all, twice the read timeout
    exchange = await call(
        gateway,
        "POST",
        "/up",
        headers=with_body_headers(None),
        receive=body_receive(chunks, delay=0.5),
    )
    assert exchange.status == 200
    assert exchange.body == b"40"

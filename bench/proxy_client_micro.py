"""Upstream-client microbenchmark: the gateway's lean HTTP/1.1 client against aiohttp's.

A minimal keep-alive upstream runs in a child process (so its CPU time is not counted); this
process forwards N requests with C in flight through each client, driving the same ASGI-level
work (header rewrite, request, response head, body, two ``send`` calls). It prints CPU and wall
microseconds per request for each client.

    .venv/bin/python bench/proxy_client_micro.py [--requests 20000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop

from bastion.deps import Deps
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.observe.metrics import Metrics
from bastion.proxy import Proxy, ProxyConfig, RouteConfig
from bastion.proxy.headers import HOP_BY_HOP
from bastion.settings import Settings

UPSTREAM = r"""
import asyncio, sys, uvloop
BODY = b'{"message":"hello"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(BODY)) + BODY

class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4:]
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

uvloop.run(main())
"""

HEADERS = [
    (b"host", b"gateway.local:8080"),
    (b"user-agent", b"wrk/4.2.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_scope(route: Any) -> dict[str, Any]:
    state = RequestState("bench-request-id", 0.0, "192.0.2.10", "http")
    state.route = route
    return {
        "type": "http",
        "method": "GET",
        "path": "/hello",
        "raw_path": b"/hello",
        "query_string": b"",
        "headers": HEADERS,
        "scheme": "http",
        "client": ("192.0.2.10", 40000),
        "state": {"bastion": state},
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def run(
    name: str, forward: Callable[[], Awaitable[int]], requests: int, concurrency: int
) -> None:
    for _ in range(500):  # warm the pool and the interpreter
        await forward()
    per_worker = requests // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            status = await forward()
            assert status == 200

    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    total = per_worker * concurrency
    print(
        f"{name:8s} {cpu / total * 1e6:7.1f} µs CPU/request   "
        f"{wall / total * 1e6:7.1f} µs wall/request   ({total} requests, {concurrency} in flight)"
    )


async def main(requests: int, concurrency: int) -> None:
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        routes = RouteTable([RouteConfig(name="default", prefix="/", upstream=url)])
        route = next(iter(routes))
        deps = Deps(settings=Settings(), metrics=Metrics(), routes=routes, prefix="/_bastion")
        proxy = Proxy(config=ProxyConfig(), deps=deps)
        await proxy.start()
        rewriter = proxy.target(route).http_headers

        async def lean() -> int:
            status = 0

            async def send(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await proxy(make_scope(route), receive, send)
            return status

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            auto_decompress=False,
        )

        async def with_aiohttp() -> int:
            scope = make_scope(route)
            state = scope["state"]["bastion"]
            rewritten = rewriter.rewrite(scope, state)
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in rewritten.headers]
            sent: list[Any] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            async with session.request("GET", url + "/hello", headers=headers) as response:
                raw = [
                    (n.lower(), v) for n, v in response.raw_headers if n.lower() not in HOP_BY_HOP
                ]
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": raw}
                )
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return response.status

        await run("lean", lean, requests, concurrency)
        await run("aiohttp", with_aiohttp, requests, concurrency)
        await run("lean", lean, requests, concurrency)
        await run("aiohttp", with_aiohttp, requests, concurrency)
        await session.close()
        await proxy.close()
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.concurrency))

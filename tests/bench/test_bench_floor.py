"""The gateway floor of the benchmark: the proxy terminal served with no stage in front."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.floor import floor_app

from bastion import Settings
from bastion.http.asgi import Message
from proxy.harness import serve_asgi, upstream_app


async def _lifespan(app: Any, queue: asyncio.Queue[Message], sent: list[Message]) -> None:
    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, queue.get, send)


async def test_floor_forwards_to_the_upstream_without_any_stage(tmp_path: Path) -> None:
    async with serve_asgi(upstream_app) as upstream:
        settings = Settings(store={"database_url": f"sqlite+aiosqlite:///{tmp_path}/f.db"})
        app = floor_app(settings.with_upstream(upstream))
        queue: asyncio.Queue[Message] = asyncio.Queue()
        lifespan_sent: list[Message] = []
        task = asyncio.create_task(_lifespan(app, queue, lifespan_sent))
        await queue.put({"type": "lifespan.startup"})
        while not lifespan_sent:
            await asyncio.sleep(0.01)
        assert lifespan_sent[0]["type"] == "lifespan.startup.complete"

        messages: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/items",
            "raw_path": b"/items",
            "query_string": b"",
            "headers": [(b"host", b"gateway.example")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        await app(scope, receive, send)
        await queue.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)

    start = messages[0]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    names = {name for name, _ in start["headers"]}
    # Nothing of the stages: no request id echoed, no security headers.
    assert b"x-request-id" not in names
    assert b"x-content-type-options" not in names
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert b'"/items"' in body
    assert lifespan_sent[-1]["type"] == "lifespan.shutdown.complete"

"""An ASGI app that records everything it receives, wrapped by Bastion over a SQLite store and
driven in-process over HTTP from any client address, for the inspection stage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from auth.service_harness import auth_config
from bastion import Bastion, Settings
from bastion.audit.events import AuditEvent, MemoryAuditSink
from bastion.http.asgi import Message, Receive, Scope, Send
from bastion.store.config import StoreConfig

CLIENT_IP = "203.0.113.9"
SQLI = "1' union select password from users--"
XSS = "<script>alert(document.cookie)</script>"


@dataclass
class Seen:
    """One call of the recording app: its scope and every message it received."""

    scope: Scope
    messages: list[Message] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.request")


class Recorder:
    """Reads the whole body, records it, answers 200 ``{"bytes": n}``; accepts WebSockets."""

    def __init__(self) -> None:
        self.calls: list[Seen] = []
        self.on_call: Callable[[], None] | None = None
        """Called as each request reaches the app, before it reads anything."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_call is not None:
            self.on_call()
        if scope["type"] == "websocket":
            seen = Seen(scope)
            self.calls.append(seen)
            seen.messages.append(await receive())
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "hello"})
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["type"] != "http":
            return
        seen = Seen(scope)
        self.calls.append(seen)
        while True:
            message = await receive()
            seen.messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = orjson.dumps({"bytes": len(seen.body)})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Protected:
    """A running engine around a :class:`Recorder`, its audit sink and an HTTP client factory."""

    engine: Bastion
    app: Any
    recorder: Recorder
    audit: MemoryAuditSink

    def client(self, ip: str = CLIENT_IP) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def events(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.audit.events if event.kind == kind]

    def metric(self, line_prefix: str) -> float:
        """The value of the exposition line starting with ``line_prefix`` (0 when absent)."""
        for line in self.engine.metrics.exposition().decode().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@asynccontextmanager
async def protected(tmp_path: Path, **settings: Any) -> AsyncIterator[Protected]:
    """``Bastion(Settings(**settings)).wrap(Recorder())`` over a new SQLite file."""
    settings.setdefault(
        "store", StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}")
    )
    settings.setdefault("auth", auth_config())
    audit = MemoryAuditSink()
    engine = Bastion(Settings(**settings), audit=audit)
    recorder = Recorder()
    app = engine.wrap(recorder)
    await engine.startup()
    try:
        yield Protected(engine, app, recorder, audit)
    finally:
        await engine.shutdown()

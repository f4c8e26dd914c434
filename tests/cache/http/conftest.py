"""Harness of the HTTP cache stage tests: a scripted origin behind the stage, the stage inside
the request-id and error stages, a principal set from a test header, and a controllable clock
shared by the stage and the tiered cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bastion.cache.config import CacheConfig
from bastion.cache.http.config import HttpCacheConfig
from bastion.cache.http.wiring import NAMESPACE, http_cache_stage
from bastion.cache.tiered import Cache
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.principal import Principal
from bastion.http.state import state_of
from bastion.settings import Settings
from manual_clock import ManualClock as Clock
from stage_harness import around, make_deps

Header = tuple[bytes, bytes]


@dataclass
class Reply:
    """One scripted answer of the origin."""

    status: int = 200
    headers: list[Header] = field(default_factory=list)
    body: bytes | list[bytes] = b"body"
    delay: float = 0.0
    error: Exception | None = None


Script = Callable[[Scope], Reply]


class Origin:
    """A raw ASGI terminal answering by a script, recording every request it sees."""

    def __init__(self) -> None:
        self.script: Script = lambda scope: Reply(headers=[(b"cache-control", b"max-age=60")])
        self.seen: list[Scope] = []

    @staticmethod
    def reply(
        status: int = 200,
        headers: list[Header] | None = None,
        body: bytes | list[bytes] = b"body",
        *,
        delay: float = 0.0,
        error: Exception | None = None,
    ) -> Reply:
        return Reply(status, headers or [], body, delay, error)

    def answer(self, *args: Any, **kwargs: Any) -> None:
        """Answer every request alike (the arguments of :meth:`reply`)."""
        fixed = self.reply(*args, **kwargs)
        self.script = lambda scope: fixed

    @property
    def calls(self) -> int:
        return len(self.seen)

    def request_headers(self, index: int = -1) -> dict[bytes, bytes]:
        return dict(self.seen[index]["headers"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope)
        reply = self.script(scope)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None:
            raise reply.error
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
        )
        chunks = reply.body if isinstance(reply.body, list) else [reply.body]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})


class PrincipalFromHeader:
    """Sets ``state.principal`` from ``x-test-user`` (and ``x-test-tenant``), as auth would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = dict(scope["headers"])
        user = found.get(b"x-test-user")
        if user is not None:
            tenant = found.get(b"x-test-tenant")
            extra: dict[str, object] = {} if tenant is None else {"tenant": tenant.decode()}
            state_of(scope).principal = Principal(
                subject=user.decode(), method="bearer", extra=extra
            )
        await self.app(scope, receive, send)


@dataclass
class Response:
    status: int
    headers: list[Header]
    body: bytes
    chunks: int

    def header(self, name: str) -> str | None:
        key = name.encode()
        for header, value in self.headers:
            if header == key:
                return value.decode("latin-1")
        return None

    @property
    def x_cache(self) -> str | None:
        return self.header("x-cache")


class Client:
    """Sends requests through the stage under test."""

    def __init__(self, app: ASGIApp, origin: Origin, cache: Cache, deps: Deps) -> None:
        self.app = app
        self.origin = origin
        self.cache = cache
        self.deps = deps

    async def request(
        self,
        method: str = "GET",
        path: str = "/r",
        *,
        headers: list[Header] | None = None,
        query: bytes = b"",
        raw_path: bytes | None = None,
    ) -> Response:
        scope: Scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": raw_path if raw_path is not None else path.encode(),
            "query_string": query,
            "headers": [(b"host", b"api.test"), *(headers or [])],
            "scheme": "http",
            "http_version": "1.1",
            "client": ("127.0.0.1", 5000),
            "server": ("api.test", 80),
        }
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        bodies = [m for m in sent[1:] if m["type"] == "http.response.body"]
        return Response(
            status=start["status"],
            headers=[(n.lower(), v) for n, v in start.get("headers", [])],
            body=b"".join(m.get("body", b"") for m in bodies),
            chunks=len(bodies),
        )

    async def get(self, path: str = "/r", **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_800_000_000.0)
    monkeypatch.setattr(time, "time", fake)
    monkeypatch.setattr("bastion.cache.tiered._time", fake)
    return fake


ClientFactory = Callable[..., Client]


@pytest.fixture
def make_client(clock: Clock) -> ClientFactory:
    """``make_client(**http_cache_options)``: a client over a fresh stage, cache and origin."""
    caches: list[Cache] = []

    def build(**options: Any) -> Client:
        options.setdefault("enabled", True)
        options.setdefault("x_cache_header", True)
        settings = Settings(cache=CacheConfig(http=HttpCacheConfig(**options)))
        deps = make_deps(settings)
        cache = Cache(CacheConfig())
        caches.append(cache)
        origin = Origin()
        store = cache.namespace(NAMESPACE)
        app = around(
            lambda inner, d: PrincipalFromHeader(http_cache_stage(inner, d, store)), origin, deps
        )
        return Client(app, origin, cache, deps)

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> Client:
    return make_client()

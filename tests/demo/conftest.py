"""Fixtures for the demo upstream's tests: a TestClient over a fresh app, and a raw ASGI driver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from bastion.demo import create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    """A client over a fresh demo app (its own seeded catalog)."""
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def make_client() -> Callable[[ASGIApp], TestClient]:
    """``with make_client(app) as client``: a TestClient over a given app."""
    return TestClient


@dataclass
class AsgiResult:
    """What an app sent for one HTTP request."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        status: int = self.messages[0]["status"]
        return status

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def http_scope(
    method: str, path: str, *, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    path_only, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers or [],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 9000),
    }


async def _call(
    app: ASGIApp,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsgiResult:
    """Run one HTTP request through ``app`` in the current event loop."""
    result = AsgiResult()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        result.messages.append(message)

    await app(http_scope(method, path, headers=headers), receive, send)
    return result


AsgiCall = Callable[..., Awaitable[AsgiResult]]


@pytest.fixture
def asgi_call() -> AsgiCall:
    """``await asgi_call(app, method, path, body=b"", headers=[...])`` -> :class:`AsgiResult`."""
    return _call

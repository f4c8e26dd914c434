"""Fixtures of the gateway tests (helpers in :mod:`proxy.harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from bastion.deps import Deps
from bastion.http.routes import RouteTable
from bastion.observe.metrics import Metrics
from bastion.proxy import Proxy, ProxyConfig, RouteConfig
from bastion.settings import Settings
from proxy.harness import (
    Gateway,
    MakeProxy,
    RawUpstream,
    Script,
    _last_websocket_close,
    serve_asgi,
    upstream_app,
)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """Base URL of a running :func:`upstream_app`."""
    _last_websocket_close.clear()
    async with serve_asgi(upstream_app) as url:
        yield url


@pytest.fixture
def websocket_closes() -> list[tuple[int | None, str]]:
    """Close codes and reasons the upstream WebSocket echo received."""
    return _last_websocket_close


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Script], Awaitable[RawUpstream]]]:
    """``await raw_upstream(script)``: a started scripted upstream, stopped after the test."""
    servers: list[RawUpstream] = []

    async def start(script: Script) -> RawUpstream:
        server = RawUpstream(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[MakeProxy]:
    """``await make_proxy(routes, settings=None, **proxy_options)``: a started gateway."""
    started: list[Proxy] = []

    async def make(
        routes: Sequence[RouteConfig], settings: Settings | None = None, **options: Any
    ) -> Gateway:
        settings = settings or Settings()
        table = RouteTable(list(routes))
        deps = Deps(settings=settings, metrics=Metrics(), routes=table, prefix="/_bastion")
        proxy = Proxy(config=ProxyConfig(**options), deps=deps)
        await proxy.start()
        started.append(proxy)
        return Gateway(proxy, table, deps.metrics, deps)

    yield make
    for proxy in started:
        await proxy.close()

"""The gateway terminal: forwards each routed request to its route's upstream.

The route is matched by an earlier stage (``state.route``); this terminal only forwards. HTTP
goes through the lean pooled client (:mod:`bastion.proxy.client`), WebSockets through aiohttp
(:mod:`bastion.proxy.websocket`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from bastion.http.asgi import Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.http.state import RequestState
from bastion.proxy.config import ProxyConfig
from bastion.proxy.http import HttpForwarder
from bastion.proxy.pool import UpstreamClient
from bastion.proxy.upstream import UpstreamTarget
from bastion.proxy.websocket import WebSocketRelay

if TYPE_CHECKING:
    from bastion.deps import Deps
    from bastion.http.routes import Route
    from bastion.observe.tracing import TracedForwarder, TracedRelay

__all__ = ["Proxy"]

_TICKS_PER_TIMEOUT = 20
"""Deadline checks per shortest read timeout (a timeout fires at most 5% late)."""


def _tick_interval(timeouts: list[float]) -> float:
    positive = [t for t in timeouts if t > 0]
    if not positive:
        return 0.5
    return min(max(min(positive) / _TICKS_PER_TIMEOUT, 0.005), 0.5)


class Proxy:
    """ASGI terminal for ``http`` and ``websocket`` scopes in gateway mode."""

    __slots__ = (
        "_client",
        "_config",
        "_http",
        "_relay",
        "_request_id_header",
        "_resolver",
        "_targets",
        "_traced",
        "_websocket",
    )

    def __init__(self, *, config: ProxyConfig, deps: Deps) -> None:
        self._config = config
        settings = deps.settings
        self._resolver = deps.client_ips if deps.client_ips.enabled else None
        self._request_id_header = settings.request_id.header
        self._traced = deps.tracing is not None
        read_timeouts = [config.read_timeout]
        read_timeouts.extend(
            r.config.read_timeout for r in deps.routes if r.config.read_timeout is not None
        )
        self._client = UpstreamClient(
            pool_size=config.pool_size,
            keepalive_timeout=config.keepalive_timeout,
            tick=_tick_interval(read_timeouts),
            ca_file=config.upstream_ca_file,
        )
        self._targets: dict[str, UpstreamTarget] = {}
        for route in deps.routes:
            self.target(route)
        forwarder = HttpForwarder(deps.metrics)
        self._http: HttpForwarder | TracedForwarder = (
            forwarder if deps.tracing is None else deps.tracing.forwarder(forwarder)
        )
        relay = WebSocketRelay(config=config, metrics=deps.metrics, client=self._client)
        self._relay = relay
        self._websocket: WebSocketRelay | TracedRelay = (
            relay if deps.tracing is None else deps.tracing.relay(relay)
        )

    def target(self, route: Route) -> UpstreamTarget:
        """The prepared upstream of ``route`` (built on first use for a route not configured at
        start, e.g. one a caller constructed itself)."""
        target = self._targets.get(route.name)
        if target is None or target.route is not route:
            target = self._targets[route.name] = UpstreamTarget(
                route,
                client=self._client,
                connect_timeout=self._config.connect_timeout,
                read_timeout=self._config.read_timeout,
                request_id_header=self._request_id_header,
                resolver=self._resolver,
                trace_context=self._traced,
            )
        return target

    @property
    def client(self) -> UpstreamClient:
        """The pooled upstream client (pools, busy connections)."""
        return self._client

    async def start(self) -> None:
        """Bind the pools to the running loop and open the WebSocket client session."""
        self._client.start()
        await self._relay.start()

    async def close(self) -> None:
        """Close every upstream connection."""
        self._client.close()
        await self._relay.close()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the forwarder's coroutine: callers await it exactly as
        # they would this method's own, minus one coroutine frame per request.
        state: RequestState = scope["state"]["bastion"]
        route = state.route
        if route is None:
            raise BastionError("not_found", "No route for this path")
        target = self._targets.get(route.name)
        if target is None or target.route is not route:
            target = self.target(route)
        kind = scope["type"]
        if kind == "http":
            return self._http(scope, receive, send, state, target)
        if kind == "websocket":
            return self._websocket(scope, receive, send, state, target)
        return _ignored()


async def _ignored() -> None:
    """Scopes other than HTTP and WebSocket have nothing to forward."""

"""Built-in probes answered before anything can shed or limit them.

``/_bastion/health`` (the process serves), ``/_bastion/ready`` (every configured store answers)
and ``/_bastion/metrics`` (Prometheus text, open to the configured networks only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.problems import BastionError, send_problem
from bastion.http.state import state_of
from bastion.observe.config import MetricsConfig
from bastion.observe.metrics import CONTENT_TYPE

__all__ = ["ProbeStage"]

ReadinessCheck = Callable[[], Awaitable[dict[str, dict[str, Any]]]]

_HEALTH_BODY = b'{"status":"ok"}'
_JSON = b"application/json"


class ProbeStage:
    """Answers the health, readiness and metrics endpoints."""

    def __init__(
        self, app: ASGIApp, *, config: MetricsConfig, deps: Deps, readiness: ReadinessCheck
    ) -> None:
        self.app = app
        prefix = deps.prefix
        self._health = prefix + "/health"
        self._ready = prefix + "/ready"
        self._metrics_path = prefix + "/metrics" if config.enabled else None
        self._paths = frozenset(p for p in (self._health, self._ready, self._metrics_path) if p)
        self._allow = tuple(config.allow)
        self._metrics = deps.metrics
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            raise BastionError(
                "method_not_allowed",
                "Only GET and HEAD are allowed here",
                headers={"Allow": "GET, HEAD"},
            )
        if path == self._health:
            await _send(send, 200, _JSON, _HEALTH_BODY, scope["method"])
        elif path == self._ready:
            await self._send_ready(scope, send)
        else:
            if not self._allowed(state_of(scope).client_ip):
                raise BastionError("forbidden", "Metrics are not available to this client")
            await _send(send, 200, CONTENT_TYPE, self._metrics.exposition(), scope["method"])

    def _allowed(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self._allow)

    async def _send_ready(self, scope: Scope, send: Send) -> None:
        checks = await self._readiness()
        if all(check.get("status") == "ok" for check in checks.values()):
            body = orjson.dumps({"status": "ok", "checks": checks})
            await _send(send, 200, _JSON, body, scope["method"])
            return
        failing = sorted(name for name, c in checks.items() if c.get("status") != "ok")
        await send_problem(
            send,
            BastionError(
                "not_ready",
                "Not every store answers: " + ", ".join(failing),
                extensions={"checks": checks},
            ),
            state_of(scope).request_id,
        )


async def _send(send: Send, status: int, content_type: bytes, body: bytes, method: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

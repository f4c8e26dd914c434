"""Per-request accounting at the end of every exchange: the access log line and HTTP metrics."""

from __future__ import annotations

import time
from typing import Any

from bastion.http.asgi import Scope
from bastion.http.state import RequestState
from bastion.observe.logging import access_output, get_logger
from bastion.observe.metrics import Metrics

__all__ = ["RequestObserver"]


class RequestObserver:
    """Writes one access-log line and the request metrics for each finished request."""

    __slots__ = ("_log", "_log_enabled", "_metrics")

    def __init__(self, metrics: Metrics, *, access_log: bool) -> None:
        self._metrics = metrics
        self._log_enabled = access_log
        self._log: Any = get_logger("bastion.access")

    def finish(
        self, scope: Scope, state: RequestState, status: int, bytes_in: int, bytes_out: int
    ) -> None:
        """Record a request that ended with ``status`` (0: no response was sent)."""
        duration = time.perf_counter() - state.started
        route = state.route.name if state.route is not None else "_none"
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        self._metrics.observe_request(route, method, status, duration)
        if not self._log_enabled:
            return
        fields = {
            "request_id": state.request_id,
            "client_ip": state.client_ip,
            "method": method,
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "user": state.user,
        }
        output = access_output()
        if output is None:
            self._log.info("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "info"
        fields["logger_name"] = "bastion.access"
        fields["timestamp"] = output.timestamp()
        output.write(fields)

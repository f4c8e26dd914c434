"""Per-request accounting at the end of every exchange: the access log line and HTTP metrics.

With ``logging.access_sample_rate`` below 1, successful requests are logged by sample: a line is
kept when a hash of its request id falls under the rate. Python's string hash is keyed per
process, so a client choosing its ``X-Request-ID`` cannot choose to stay out of the log, and the
hash of a string is computed once and cached on it. Refusals and failures (4xx, 5xx, or no
response at all), requests slower than ``logging.access_slow_threshold`` and requests whose
trace is sampled are always logged, so every exported trace has its line.
"""

from __future__ import annotations

import time
from typing import Any

from bastion.http.asgi import Scope
from bastion.http.state import RequestState
from bastion.observe.config import LoggingConfig
from bastion.observe.logging import (
    TRACE_IDS,
    AccessRecord,
    access_fields,
    access_output,
    get_logger,
)
from bastion.observe.metrics import Metrics

__all__ = ["RequestObserver", "sampled_in"]

_HASH_SPACE = 1 << 32


def sampled_in(request_id: str, threshold: int) -> bool:
    """Whether a successful request's line is kept: ``threshold`` out of 2**32 are."""
    return (hash(request_id) & 0xFFFF_FFFF) < threshold


class RequestObserver:
    """Writes one access-log line and the request metrics for each finished request."""

    __slots__ = ("_log", "_log_enabled", "_metrics", "_slow", "_threshold", "_traced")

    def __init__(self, metrics: Metrics, *, access_log: bool) -> None:
        self._metrics = metrics
        self._log_enabled = access_log
        self._log: Any = get_logger("bastion.access")
        self._threshold: int | None = None
        """``None``: every line is kept (no per-request sampling work at all)."""
        self._slow = 0.0
        self._traced = False

    def configure(self, config: LoggingConfig, *, traced: bool = False) -> None:
        """Apply ``[logging]``'s access-log sampling; ``traced``: the tracing stage binds trace
        ids around this observer, so lines carry them (and a sampled trace keeps its line)."""
        rate = config.access_sample_rate
        self._threshold = None if rate >= 1.0 else int(rate * _HASH_SPACE)
        self._slow = config.access_slow_threshold
        self._traced = traced

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
        trace = TRACE_IDS.get() if self._traced else None
        threshold = self._threshold
        if (
            threshold is not None
            and 0 < status < 400
            and duration < self._slow
            and (trace is None or not trace[2])
            and not sampled_in(state.request_id, threshold)
        ):
            return
        record: AccessRecord = (
            time.time(),
            state.request_id,
            state.client_ip,
            method,
            route,
            scope["path"],
            status,
            duration,
            bytes_in,
            bytes_out,
            state.user,
            trace,
        )
        output = access_output()
        if output is not None:
            output.request(record)
        else:
            self._log.info("request", **access_fields(record))

"""Alerts: rules over sliding windows of requests and security events (``[alerts]``).

Sources, all observed without waiting and without locks (the event loop is single-threaded):

- answered requests, from the request observer (``error_rate``, ``latency_p95``); installed
  only when such a rule exists;
- audit events, from a sink wrapped around the engine's (``auth_failures``, ``bans``,
  ``waf_blocks``), which forwards every event untouched;
- store errors, from :meth:`Metrics.store_error` (``store_errors``).

Windows are rings of 60 slots (a slot is a sixtieth of the window, at least a second), so memory
is fixed per rule whatever the traffic. ``latency_p95`` keeps a fixed-bucket histogram per slot
with the rule's threshold as a bucket edge, so "p95 above the threshold" is decided exactly and
the reported p95 is the upper edge of its bucket. ``per = "ip"`` rules keep a smaller ring (12
slots) per client address in a table of at most ``max_tracked_ips``; an address idle for a whole
window makes room for a new one, and when none is idle new addresses are counted together under
``other``, so rotating addresses neither grows memory nor erases the counts of an active one.

A background task evaluates every rule each ``interval``. An episode fires once when the value
goes above the threshold (after ``fire_after``), stays quiet while it holds, and resolves once
the value has stayed at or below it for ``resolve_after``. Each transition is one log line on
``bastion.alerts``, one ``bastion_alerts_total`` increment and one webhook delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import socket
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bastion.audit.events import AuditEvent, AuditSink
from bastion.http.asgi import Scope
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.config import AlertRuleConfig, AlertsConfig
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.observe.webhook import WebhookSender

if TYPE_CHECKING:
    from bastion.http.routes import RouteTable

__all__ = [
    "BUILTIN_RULES",
    "EVENT_KINDS",
    "OTHER",
    "Alert",
    "AlertEngine",
    "AlertingAuditSink",
    "AlertingObserver",
    "SlidingCount",
]

_log: Any = get_logger("bastion.alerts")

OTHER = "other"
"""The key under which ``per = "ip"`` rules count addresses beyond ``max_tracked_ips``."""

_SLOTS = 60
_IP_SLOTS = 12
_UNROUTED = "_none"

EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "auth_failures": ("auth.login.failed", "auth.login.lockout"),
    "bans": ("ratelimit.banned", "inspect.strike.blocked"),
    "waf_blocks": ("inspect.blocked",),
}
"""Audit event kinds counted by each event rule kind."""

_UNITS = {"error_rate": "percent", "latency_p95": "ms"}

_LATENCY_EDGES_MS = (
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000,
)  # fmt: skip
"""Histogram bucket edges of ``latency_p95`` rules; the rule's threshold is added to them."""

BUILTIN_RULES: tuple[AlertRuleConfig, ...] = (
    AlertRuleConfig(name="error-rate", kind="error_rate", threshold=5, window=300, min_requests=50),
    AlertRuleConfig(
        name="latency-p95", kind="latency_p95", threshold=1000, window=300, min_requests=50
    ),
    AlertRuleConfig(name="auth-failures-ip", kind="auth_failures", threshold=20, per="ip"),
    AlertRuleConfig(name="auth-failures", kind="auth_failures", threshold=100),
    AlertRuleConfig(name="bans", kind="bans", threshold=10, window=300),
    AlertRuleConfig(name="waf-blocks", kind="waf_blocks", threshold=50, window=300),
    AlertRuleConfig(name="store-errors", kind="store_errors", threshold=5),
)
"""The rules used when ``[alerts]`` is enabled without any ``[[alerts.rules]]``."""


def _slot_count(window: float, slots: int) -> int:
    """Slots of a window: ``slots``, fewer when that would make a slot shorter than a second."""
    return max(1, min(slots, int(window)))


class SlidingCount:
    """Events in a sliding window, kept as a ring of per-slot counts."""

    __slots__ = ("_counts", "_size", "_stamps", "_width", "last")

    def __init__(self, window: float, slots: int) -> None:
        self._size = _slot_count(window, slots)
        self._width = window / self._size
        self._counts = [0] * self._size
        self._stamps = [-1] * self._size
        self.last = -(2**62)
        """Slot of the latest event."""

    def add(self, now: float, amount: int = 1) -> None:
        slot = int(now / self._width)
        index = slot % self._size
        if self._stamps[index] != slot:
            self._stamps[index] = slot
            self._counts[index] = amount
        else:
            self._counts[index] += amount
        self.last = slot

    def total(self, now: float) -> int:
        """Events of the last window (to within one slot)."""
        oldest = int(now / self._width) - self._size
        return sum(c for c, s in zip(self._counts, self._stamps, strict=True) if s > oldest)

    def idle(self, now: float) -> bool:
        """No event for a whole window."""
        return int(now / self._width) - self.last >= self._size


@dataclass(slots=True)
class Alert:
    """One transition of an episode, as delivered."""

    state: str
    """``firing`` or ``resolved``."""
    rule: AlertRuleConfig
    value: float
    episode: str
    started_at: float
    """Wall-clock time the episode fired (Unix seconds)."""
    client_ip: str | None = None
    resolved_at: float | None = None
    requests: int | None = None

    def payload(self, instance: str) -> dict[str, Any]:
        """The webhook body: ``type``, ``timestamp`` and ``data`` (Standard Webhooks shape)."""
        rule = self.rule
        when = self.resolved_at if self.resolved_at is not None else self.started_at
        data: dict[str, Any] = {
            "id": self.episode,
            "rule": rule.name,
            "kind": rule.kind,
            "severity": rule.severity,
            "per": rule.per,
            "value": round(self.value, 3),
            "threshold": rule.threshold,
            "unit": _UNITS.get(rule.kind, "events"),
            "window_seconds": rule.window,
            "started_at": _iso(self.started_at),
            "instance": instance,
        }
        if self.client_ip is not None:
            data["client_ip"] = self.client_ip
        if self.requests is not None:
            data["requests"] = self.requests
        if self.resolved_at is not None:
            data["resolved_at"] = _iso(self.resolved_at)
        return {"type": f"alert.{self.state}", "timestamp": _iso(when), "data": data}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Episode:
    """Where one rule (for one address) stands: idle, pending, firing or clearing."""

    pending_since: float | None = None
    firing: bool = False
    episode: str = ""
    started_at: float = 0.0
    clear_since: float | None = None

    @property
    def active(self) -> bool:
        return self.firing or self.pending_since is not None


@dataclass(slots=True)
class _Reading:
    value: float
    holds: bool
    requests: int | None = None


class _Rule:
    """A rule's configuration and its episode (``per = "ip"`` rules keep one per client)."""

    __slots__ = ("config", "episode")

    def __init__(self, config: AlertRuleConfig) -> None:
        self.config = config
        self.episode = Episode()


class _CountRule(_Rule):
    """Events over the window, all clients together."""

    __slots__ = ("counts",)

    def __init__(self, config: AlertRuleConfig) -> None:
        super().__init__(config)
        self.counts = SlidingCount(config.window, _SLOTS)

    def read(self, now: float) -> _Reading:
        total = self.counts.total(now)
        return _Reading(total, total > self.config.threshold)


class _RequestRule(_Rule):
    """A ring of per-slot rows of counters over answered requests. The row of the current
    slot is kept at hand, so a request in the same slot as the previous one costs a comparison
    and an increment."""

    __slots__ = ("buckets", "row", "rows", "size", "slot_end", "stamps", "width")

    def __init__(self, config: AlertRuleConfig, buckets: int) -> None:
        super().__init__(config)
        self.buckets = buckets
        self.size = _slot_count(config.window, _SLOTS)
        self.width = config.window / self.size
        self.rows = [[0] * buckets for _ in range(self.size)]
        self.stamps = [-1] * self.size
        self.row = self.rows[0]
        self.slot_end = -math.inf
        """When the current slot ends: the next request after it moves to a fresh row."""

    def roll(self, now: float) -> None:
        slot = int(now / self.width)
        index = slot % self.size
        if self.stamps[index] != slot:
            self.stamps[index] = slot
            self.rows[index] = [0] * self.buckets
        self.row = self.rows[index]
        self.slot_end = (slot + 1) * self.width

    def merged(self, now: float) -> list[int]:
        """The rows of the last window, added up."""
        oldest = int(now / self.width) - self.size
        total = [0] * self.buckets
        for row, stamp in zip(self.rows, self.stamps, strict=True):
            if stamp > oldest:
                for bucket, count in enumerate(row):
                    total[bucket] += count
        return total


class _ErrorRateRule(_RequestRule):
    """Percent of answered requests with a 5xx status: per slot ``[answered, errors]``."""

    __slots__ = ()

    def __init__(self, config: AlertRuleConfig) -> None:
        super().__init__(config, 2)

    def observe(self, now: float, status: int, seconds: float) -> None:
        if now >= self.slot_end:
            self.roll(now)
        row = self.row
        row[0] += 1
        if status >= 500:
            row[1] += 1

    def read(self, now: float) -> _Reading:
        answered, errors = self.merged(now)
        if answered == 0:
            return _Reading(0.0, False, 0)
        rate = 100.0 * errors / answered
        holds = answered >= self.config.min_requests and rate > self.config.threshold
        return _Reading(rate, holds, answered)


class _LatencyRule(_RequestRule):
    """95th percentile of request durations: a fixed-bucket histogram per slot, with the
    threshold as one of the bucket edges."""

    __slots__ = ("edges", "edges_ms", "limit")

    def __init__(self, config: AlertRuleConfig) -> None:
        edges_ms = sorted({*_LATENCY_EDGES_MS, config.threshold})
        super().__init__(config, len(edges_ms) + 1)
        self.edges_ms = edges_ms
        self.edges = [edge / 1000.0 for edge in edges_ms]
        self.limit = edges_ms.index(config.threshold)
        """Buckets up to this index hold durations at or below the threshold."""

    def observe(self, now: float, status: int, seconds: float) -> None:
        if now >= self.slot_end:
            self.roll(now)
        self.row[bisect_left(self.edges, seconds)] += 1

    def read(self, now: float) -> _Reading:
        merged = self.merged(now)
        answered = sum(merged)
        if answered == 0:
            return _Reading(0.0, False, 0)
        rank = math.ceil(0.95 * answered)
        seen = 0
        bucket = 0
        for bucket, count in enumerate(merged):  # noqa: B007 - the bucket is used below
            seen += count
            if seen >= rank:
                break
        value = float(self.edges_ms[min(bucket, len(self.edges_ms) - 1)])
        holds = answered >= self.config.min_requests and bucket > self.limit
        return _Reading(value, holds, answered)


@dataclass(slots=True)
class _Client:
    """One address of a ``per = "ip"`` rule: its counts and its episode."""

    key: str
    counts: SlidingCount
    episode: Episode = field(default_factory=Episode)


class _PerIpRule(_Rule):
    """Events over the window per client address, in a bounded table."""

    __slots__ = ("active", "capacity", "clients", "dirty", "other")

    def __init__(self, config: AlertRuleConfig, capacity: int) -> None:
        super().__init__(config)
        self.capacity = capacity
        self.clients: dict[str, _Client] = {}
        """Tracked addresses, least recently seen first."""
        self.other = _Client(OTHER, SlidingCount(config.window, _IP_SLOTS))
        self.dirty: dict[str, _Client] = {}
        """Clients with events since the last evaluation."""
        self.active: dict[str, _Client] = {}
        """Clients with a pending or firing episode."""

    def add(self, ip: str | None, now: float) -> None:
        client = self.clients.pop(ip, None) if ip is not None else self.other
        if client is None:
            assert ip is not None
            if len(self.clients) < self.capacity or self._evict(now):
                client = _Client(ip, SlidingCount(self.config.window, _IP_SLOTS))
            else:
                client = self.other
        if client is not self.other:
            self.clients[client.key] = client  # re-inserted last: most recently seen
        client.counts.add(now)
        self.dirty[client.key] = client

    def _evict(self, now: float) -> bool:
        """Make room by forgetting the least recently seen address if it is idle."""
        oldest = next(iter(self.clients.values()))
        if oldest.counts.idle(now) and not oldest.episode.active:
            del self.clients[oldest.key]
            return True
        return False

    def candidates(self) -> list[_Client]:
        """The clients whose episode can change at this evaluation."""
        found = {**self.active, **self.dirty}
        self.dirty = {}
        return list(found.values())


_AnyRule = _CountRule | _ErrorRateRule | _LatencyRule | _PerIpRule


class AlertEngine:
    """Observes requests and events, evaluates the rules, delivers transitions."""

    def __init__(
        self,
        config: AlertsConfig,
        metrics: Metrics,
        *,
        routes: RouteTable | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        webhook: WebhookSender | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        """Monotonic seconds of observations and evaluations (replaceable in tests)."""
        self.wall = wall
        self._metrics = metrics
        self._instance = socket.gethostname()
        if webhook is None and config.webhook.url:
            webhook = WebhookSender(config.webhook, metrics, wall=wall)
        self.webhook = webhook
        self.listeners: list[Callable[[Alert], None]] = []
        """Called with every transition (embedding code, tests)."""
        self._task: asyncio.Task[None] | None = None
        rules = config.rules or list(BUILTIN_RULES)
        self.rules: list[_AnyRule] = []
        request_rules: list[tuple[_ErrorRateRule | _LatencyRule, frozenset[str]]] = []
        self._event_rules: dict[str, list[_CountRule | _PerIpRule]] = {}
        self._store_rules: list[_CountRule] = []
        route_names = {route.name for route in routes} if routes is not None else set()
        for rule_config in rules:
            rule = self._build(rule_config)
            self.rules.append(rule)
            if isinstance(rule, _ErrorRateRule | _LatencyRule):
                unknown = set(rule_config.routes) - route_names - {_UNROUTED}
                if unknown:
                    raise ValueError(
                        f"alert rule {rule_config.name!r} names unknown routes: "
                        + ", ".join(sorted(unknown))
                    )
                request_rules.append((rule, frozenset(rule_config.routes)))
            elif rule_config.kind == "store_errors":
                assert isinstance(rule, _CountRule)
                self._store_rules.append(rule)
            else:
                assert isinstance(rule, _CountRule | _PerIpRule)
                for kind in EVENT_KINDS[rule_config.kind]:
                    self._event_rules.setdefault(kind, []).append(rule)
        self.watches_requests = bool(request_rules)
        """Whether any rule needs the request observer hook."""
        self.watches_store_errors = bool(self._store_rules)
        # Rules per route name, resolved once: a request looks its tuple up by name.
        self._all_routes = tuple(rule for rule, names in request_rules if not names)
        self._by_route = {
            name: tuple(rule for rule, names in request_rules if not names or name in names)
            for name in (*route_names, _UNROUTED)
        }

    def _build(self, config: AlertRuleConfig) -> _AnyRule:
        if config.kind == "error_rate":
            return _ErrorRateRule(config)
        if config.kind == "latency_p95":
            return _LatencyRule(config)
        if config.per == "ip":
            return _PerIpRule(config, self.config.max_tracked_ips)
        return _CountRule(config)

    # -- observation (request path) ---------------------------------------------------------

    def observe_request(self, scope: Scope, state: RequestState, status: int) -> None:
        """One finished exchange; requests without a response and WebSockets are skipped."""
        if status == 0 or scope["type"] != "http":
            return
        route = state.route
        rules = self._by_route.get(route.name if route is not None else _UNROUTED, self._all_routes)
        if not rules:
            return
        seconds = time.perf_counter() - state.started
        now = self.clock()
        for rule in rules:
            rule.observe(now, status, seconds)

    def observe_event(self, event: AuditEvent) -> None:
        """One audit event; kinds no rule counts cost a dictionary miss."""
        rules = self._event_rules.get(event.kind)
        if rules is None:
            return
        now = self.clock()
        for rule in rules:
            if isinstance(rule, _PerIpRule):
                rule.add(event.client_ip, now)
            else:
                rule.counts.add(now)

    def store_error(self, store: str, op: str) -> None:
        """One failed store operation (the :class:`Metrics` listener)."""
        now = self.clock()
        for rule in self._store_rules:
            rule.counts.add(now)

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> list[Alert]:
        """Evaluate every rule once; deliver and return the transitions."""
        if now is None:
            now = self.clock()
        alerts: list[Alert] = []
        for rule in self.rules:
            if isinstance(rule, _PerIpRule):
                for client in rule.candidates():
                    total = client.counts.total(now)
                    reading = _Reading(total, total > rule.config.threshold)
                    alert = self._step(rule.config, client.episode, reading, now, client.key)
                    if alert is not None:
                        alerts.append(alert)
                    if client.episode.active:
                        rule.active[client.key] = client
                    else:
                        rule.active.pop(client.key, None)
            else:
                alert = self._step(rule.config, rule.episode, rule.read(now), now, None)
                if alert is not None:
                    alerts.append(alert)
        for alert in alerts:
            self._deliver(alert)
        return alerts

    def _step(
        self,
        config: AlertRuleConfig,
        episode: Episode,
        reading: _Reading,
        now: float,
        client_ip: str | None,
    ) -> Alert | None:
        """Advance one episode by one evaluation; the transition it made, if any."""
        if not episode.firing:
            if not reading.holds:
                episode.pending_since = None
                return None
            if episode.pending_since is None:
                episode.pending_since = now
            if now - episode.pending_since < config.fire_after:
                return None
            episode.firing = True
            episode.pending_since = None
            episode.clear_since = None
            episode.episode = "alt_" + secrets.token_urlsafe(12)
            episode.started_at = self.wall()
            return Alert(
                "firing",
                config,
                reading.value,
                episode.episode,
                episode.started_at,
                client_ip=client_ip,
                requests=reading.requests,
            )
        if reading.holds:
            episode.clear_since = None
            return None
        if episode.clear_since is None:
            episode.clear_since = now
        if now - episode.clear_since < config.resolve_after:
            return None
        episode.firing = False
        episode.clear_since = None
        return Alert(
            "resolved",
            config,
            reading.value,
            episode.episode,
            episode.started_at,
            client_ip=client_ip,
            resolved_at=self.wall(),
            requests=reading.requests,
        )

    def _deliver(self, alert: Alert) -> None:
        config = alert.rule
        self._metrics.alert_transition(config.name, alert.state)
        payload = alert.payload(self._instance)
        fields = payload["data"]
        if alert.state == "firing":
            _log.warning("alert firing", **fields)
        else:
            _log.info("alert resolved", **fields)
        if self.webhook is not None:
            self.webhook.submit(payload)
        for listener in self.listeners:
            try:
                listener(alert)
            except Exception as exc:
                _log.error("alert listener failed", error=repr(exc))

    # -- wiring and life cycle --------------------------------------------------------------

    def audit_sink(self, inner: AuditSink) -> AlertingAuditSink:
        """``inner`` with every event also observed by the rules."""
        return AlertingAuditSink(inner, self)

    def observer(self, metrics: Metrics, *, access_log: bool) -> RequestObserver:
        """The request observer: with the alert hook only when a rule watches requests."""
        if not self.watches_requests:
            return RequestObserver(metrics, access_log=access_log)
        return AlertingObserver(metrics, access_log=access_log, alerts=self)

    async def start(self) -> None:
        """Start the evaluation task and the webhook sender."""
        if self._task is not None:
            return
        if self.webhook is not None:
            await self.webhook.start()
        self._task = asyncio.create_task(self._run(), name="bastion-alerts")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.webhook is not None:
            await self.webhook.close()

    async def _run(self) -> None:
        interval = self.config.interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.evaluate()
            except Exception as exc:
                # A failed evaluation must not end alerting for the rest of the process.
                _log.error("alert evaluation failed", error=repr(exc))


class AlertingAuditSink:
    """Forwards every event to the inner sink after showing it to the alert rules; observing
    never raises and never waits, so the inner emit is neither delayed nor failed by it."""

    __slots__ = ("_alerts", "inner")

    def __init__(self, inner: AuditSink, alerts: AlertEngine) -> None:
        self.inner = inner
        self._alerts = alerts

    async def emit(self, event: AuditEvent) -> None:
        try:
            self._alerts.observe_event(event)
        except Exception as exc:
            _log.error("alert observation failed", kind=event.kind, error=repr(exc))
        await self.inner.emit(event)

    def __getattr__(self, name: str) -> Any:
        # The engine's durable sink has more than ``emit`` (start, close, queries…).
        return getattr(self.inner, name)


class AlertingObserver(RequestObserver):
    """The request observer plus the alert rules over answered requests."""

    __slots__ = ("_alerts",)

    def __init__(self, metrics: Metrics, *, access_log: bool, alerts: AlertEngine) -> None:
        super().__init__(metrics, access_log=access_log)
        self._alerts = alerts

    def finish(
        self, scope: Scope, state: RequestState, status: int, bytes_in: int, bytes_out: int
    ) -> None:
        super().finish(scope, state, status, bytes_in, bytes_out)
        self._alerts.observe_request(scope, state, status)

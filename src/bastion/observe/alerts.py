"""Alerts: rules over sliding windows of requests and security events (``[alerts]``).

Sources, all observed without waiting and without locks (the event loop is single-threaded):

- answered requests, from the request observer (``error_rate``, ``latency_p95``); installed
  only when such a rule exists;
- audit events, from a sink wrapped around the engine's (``auth_failures``, ``bans``,
  ``waf_blocks``), which forwards every event untouched;
- store errors, from :meth:`Metrics.store_error` (``store_errors``).

The windows and readings are in :mod:`bastion.observe.alert_rules`. A background task evaluates
every rule each ``interval``. An episode fires once when the value goes above the threshold
(after ``fire_after``), stays quiet while it holds, and resolves once the value has stayed at or
below it for ``resolve_after``. Each transition is one log line on ``bastion.alerts``, one
``bastion_alerts_total`` increment and one webhook delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion.audit.events import AuditEvent, AuditSink
from bastion.http.asgi import Scope
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.alert_rules import (
    BUILTIN_RULES,
    EVENT_KINDS,
    UNROUTED,
    Alert,
    AnyRule,
    CountRule,
    Episode,
    ErrorRateRule,
    LatencyRule,
    PerIpRule,
    Reading,
)
from bastion.observe.config import AlertRuleConfig, AlertsConfig
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.observe.webhook import WebhookSender
from bastion.pipeline.errors import PROBLEM_KEY

if TYPE_CHECKING:
    from bastion.http.routes import RouteTable

__all__ = ["AlertEngine", "AlertingAuditSink", "AlertingObserver"]

_log: Any = get_logger("bastion.alerts")


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
        self._exclude_refusals = config.exclude_refusals
        self._instance = socket.gethostname()
        if webhook is None and config.webhook.url:
            webhook = WebhookSender(config.webhook, metrics, wall=wall)
        self.webhook = webhook
        self.listeners: list[Callable[[Alert], None]] = []
        """Called with every transition (embedding code, tests)."""
        self._task: asyncio.Task[None] | None = None
        rules = config.rules or list(BUILTIN_RULES)
        self.rules: list[AnyRule] = []
        request_rules: list[tuple[ErrorRateRule | LatencyRule, frozenset[str]]] = []
        self._event_rules: dict[str, list[CountRule | PerIpRule]] = {}
        self._store_rules: list[CountRule] = []
        route_names = {route.name for route in routes} if routes is not None else set()
        for rule_config in rules:
            rule = self._build(rule_config)
            self.rules.append(rule)
            if isinstance(rule, ErrorRateRule | LatencyRule):
                unknown = set(rule_config.routes) - route_names - {UNROUTED}
                if unknown:
                    raise ValueError(
                        f"alert rule {rule_config.name!r} names unknown routes: "
                        + ", ".join(sorted(unknown))
                    )
                request_rules.append((rule, frozenset(rule_config.routes)))
            elif rule_config.kind == "store_errors":
                assert isinstance(rule, CountRule)
                self._store_rules.append(rule)
            else:
                assert isinstance(rule, CountRule | PerIpRule)
                for kind in EVENT_KINDS[rule_config.kind]:
                    self._event_rules.setdefault(kind, []).append(rule)
        self.watches_requests = bool(request_rules)
        """Whether any rule needs the request observer hook."""
        self.watches_store_errors = bool(self._store_rules)
        # Rules per route name, resolved once: a request looks its tuple up by name.
        self._all_routes = tuple(rule for rule, names in request_rules if not names)
        self._by_route = {
            name: tuple(rule for rule, names in request_rules if not names or name in names)
            for name in (*route_names, UNROUTED)
        }

    def _build(self, config: AlertRuleConfig) -> AnyRule:
        if config.kind == "error_rate":
            return ErrorRateRule(config)
        if config.kind == "latency_p95":
            return LatencyRule(config)
        if config.per == "ip":
            return PerIpRule(config, self.config.max_tracked_ips)
        return CountRule(config)

    # -- observation (request path) ---------------------------------------------------------

    def observe_request(self, scope: Scope, state: RequestState, status: int) -> None:
        """One finished exchange; requests without a response, WebSockets and (with
        ``exclude_refusals``) Bastion's own 4xx refusals are skipped."""
        if status == 0 or scope["type"] != "http":
            return
        if self._exclude_refusals and status < 500 and PROBLEM_KEY in scope.get("state", ()):
            return  # refused by Bastion itself, not an answer of the application
        route = state.route
        rules = self._by_route.get(route.name if route is not None else UNROUTED, self._all_routes)
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
            if isinstance(rule, PerIpRule):
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
            if isinstance(rule, PerIpRule):
                for client in rule.candidates():
                    total = client.counts.total(now)
                    reading = Reading(total, total > rule.config.threshold)
                    alert = self._step(rule.config, client.episode, reading, now, client.key)
                    if alert is not None:
                        alerts.append(alert)
                    rule.settle(client)
            else:
                alert = self._step(rule.config, rule.episode, rule.read(now), now, None)
                if alert is not None:
                    alerts.append(alert)
        for alert in alerts:
            try:
                self._deliver(alert)
            except Exception as exc:
                # One failed delivery must not lose the other transitions of this evaluation.
                _log.error("alert delivery failed", rule=alert.rule.name, error=repr(exc))
        return alerts

    def _step(
        self,
        config: AlertRuleConfig,
        episode: Episode,
        reading: Reading,
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
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                # RuntimeError: the task belongs to an event loop that has already ended.
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

    __slots__ = ("_alerts", "_failed")

    def __init__(self, metrics: Metrics, *, access_log: bool, alerts: AlertEngine) -> None:
        super().__init__(metrics, access_log=access_log)
        self._alerts = alerts
        self._failed = False

    def finish(
        self, scope: Scope, state: RequestState, status: int, bytes_in: int, bytes_out: int
    ) -> None:
        super().finish(scope, state, status, bytes_in, bytes_out)
        try:
            self._alerts.observe_request(scope, state, status)
        except Exception as exc:
            # Observing must never fail a request; one line, not one per request.
            if not self._failed:
                self._failed = True
                _log.error("alert request observation failed", error=repr(exc))

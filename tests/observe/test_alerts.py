"""Alert rules on synthetic traffic with a fake clock: every kind fires once per episode and
resolves; per-address episodes; bounded memory under address rotation; configuration checks."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from bastion import Bastion, Settings
from bastion.audit.events import AuditEvent, MemoryAuditSink
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.alert_rules import BUILTIN_RULES, OTHER, Alert, SlidingCount
from bastion.observe.alerts import AlertEngine, AlertingAuditSink, AlertingObserver
from bastion.observe.config import AlertRuleConfig, AlertsConfig
from bastion.observe.metrics import Metrics
from bastion.proxy.config import RouteConfig
from observe.alert_harness import Clock, engine_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def states(alerts: list[Alert]) -> list[tuple[str, str, str | None]]:
    return [(a.state, a.rule.name, a.client_ip) for a in alerts]


def transitions(metrics: Metrics, rule: str, state: str) -> float:
    value = metrics.registry.get_sample_value(
        "bastion_alerts_total", {"rule": rule, "state": state}
    )
    return value or 0.0


def event(kind: str, ip: str | None = "203.0.113.7") -> AuditEvent:
    return AuditEvent(kind=kind, outcome="failure", client_ip=ip)


def request(alerts: AlertEngine, status: int, seconds: float = 0.001, route: Any = None) -> None:
    state = RequestState("r" * 32, time.perf_counter() - seconds, "198.51.100.1", "http")
    state.route = route
    alerts.observe_request({"type": "http"}, state, status)


# -- every kind: one firing per episode, then one resolution --------------------------------

EVENT_RULES = [
    ("auth_failures", "auth.login.failed"),
    ("auth_failures", "auth.login.lockout"),
    ("auth_failures", "auth.mfa.verify_failed"),
    ("auth_failures", "auth.mfa.reauthentication_failed"),
    ("auth_failures", "auth.token.reused"),
    ("bans", "ratelimit.banned"),
    ("bans", "inspect.strike.blocked"),
    ("waf_blocks", "inspect.blocked"),
]


def feed(alerts: AlertEngine, kind: str, source: str, count: int) -> None:
    for _ in range(count):
        if kind == "store_errors":
            alerts.store_error("redis", "ratelimit")
        else:
            alerts.observe_event(event(source))


@pytest.mark.parametrize(
    ("kind", "source"), [*EVENT_RULES, ("store_errors", "")], ids=lambda v: v or "store"
)
def test_count_rule_fires_once_per_episode_and_resolves(kind: str, source: str) -> None:
    alerts, clock, metrics = engine_for(
        {"name": "r", "kind": kind, "threshold": 3, "window": 60, "resolve_after": 30}
    )
    feed(alerts, kind, source, 3)
    assert alerts.evaluate() == []  # 3 is not above the threshold
    feed(alerts, kind, source, 1)
    first = alerts.evaluate()
    assert states(first) == [("firing", "r", None)]
    assert first[0].value == 4
    for _ in range(5):  # still holding, more events: quiet
        feed(alerts, kind, source, 2)
        clock.advance(5)
        assert alerts.evaluate() == []
    clock.advance(61)  # the window has emptied: the condition stopped holding
    assert alerts.evaluate() == []  # resolve_after has not elapsed yet
    clock.advance(29)
    assert alerts.evaluate() == []
    clock.advance(1)
    resolved = alerts.evaluate()
    assert states(resolved) == [("resolved", "r", None)]
    assert resolved[0].episode == first[0].episode
    assert resolved[0].resolved_at is not None
    clock.advance(5)
    assert alerts.evaluate() == []
    feed(alerts, kind, source, 4)  # a new episode has a new id
    again = alerts.evaluate()
    assert states(again) == [("firing", "r", None)]
    assert again[0].episode != first[0].episode
    assert transitions(metrics, "r", "firing") == 2
    assert transitions(metrics, "r", "resolved") == 1


def test_events_of_other_kinds_are_not_counted() -> None:
    alerts, _, _ = engine_for({"name": "waf", "kind": "waf_blocks", "threshold": 0})
    for kind in ("inspect.detected", "auth.login.succeeded", "access.denied", "alert.firing"):
        alerts.observe_event(event(kind))
    assert alerts.evaluate() == []
    alerts.observe_event(event("inspect.blocked"))
    assert states(alerts.evaluate()) == [("firing", "waf", None)]


def test_error_rate_fires_above_the_percentage_with_enough_requests() -> None:
    alerts, clock, _ = engine_for(
        {
            "name": "errors",
            "kind": "error_rate",
            "threshold": 10,
            "min_requests": 20,
            "window": 60,
            "resolve_after": 10,
        }
    )
    for _ in range(5):
        request(alerts, 503)
    assert alerts.evaluate() == []  # 100% errors, but only 5 requests
    for _ in range(45):
        request(alerts, 200)
    assert alerts.evaluate() == []  # 5 of 50: exactly 10%, not above
    request(alerts, 500)
    firing = alerts.evaluate()
    assert states(firing) == [("firing", "errors", None)]
    assert firing[0].value == pytest.approx(100 * 6 / 51)
    assert firing[0].requests == 51
    for status in (404, 429, 401):  # client errors are not errors of the service
        request(alerts, status)
    clock.advance(30)
    for _ in range(200):
        request(alerts, 200)
    assert alerts.evaluate() == []  # 6 of 254: 2.4%, clearing for resolve_after
    clock.advance(10)
    for _ in range(10):
        request(alerts, 200)
    assert states(alerts.evaluate()) == [("resolved", "errors", None)]


def test_requests_without_a_response_and_websockets_are_not_counted() -> None:
    alerts, _, _ = engine_for(
        {"name": "errors", "kind": "error_rate", "threshold": 1, "min_requests": 1}
    )
    state = RequestState("r" * 32, time.perf_counter(), "198.51.100.1", "http")
    alerts.observe_request({"type": "http"}, state, 0)
    alerts.observe_request({"type": "websocket"}, state, 500)
    assert alerts.evaluate() == []


def test_latency_p95_is_exact_at_the_threshold() -> None:
    alerts, clock, _ = engine_for(
        {
            "name": "slow",
            "kind": "latency_p95",
            "threshold": 250,
            "min_requests": 100,
            "window": 60,
            "resolve_after": 0,
        }
    )
    for _ in range(95):
        request(alerts, 200, 0.010)
    for _ in range(5):
        request(alerts, 200, 0.350)
    assert alerts.evaluate() == []  # p95 is the 95th of 100: a fast one
    request(alerts, 200, 0.350)
    firing = alerts.evaluate()  # 6 of 101 slow: the 96th is slow
    assert states(firing) == [("firing", "slow", None)]
    assert firing[0].value == 400.0  # upper edge of the (300, 400] ms bucket
    clock.advance(61)
    for _ in range(100):
        request(alerts, 200, 0.240)  # in the bucket up to the threshold: not above it
    resolved = alerts.evaluate()
    assert states(resolved) == [("resolved", "slow", None)]
    assert resolved[0].value == 250.0


def test_route_filter_only_counts_the_named_routes() -> None:
    table = RouteTable(
        [
            RouteConfig(name="api", prefix="/api", upstream="http://127.0.0.1:9"),
            RouteConfig(name="web", prefix="/", upstream="http://127.0.0.1:9"),
        ]
    )
    api, web = sorted(table, key=lambda route: route.name)
    clock = Clock()
    alerts = AlertEngine(
        AlertsConfig(
            enabled=True,
            rules=[
                AlertRuleConfig(
                    name="api-errors",
                    kind="error_rate",
                    threshold=50,
                    min_requests=4,
                    routes=["api"],
                )
            ],
        ),
        Metrics(),
        routes=table,
        clock=clock,
    )
    for _ in range(10):
        request(alerts, 500, route=web)
        request(alerts, 500, route=None)
    assert alerts.evaluate() == []
    for _ in range(4):
        request(alerts, 502, route=api)
    assert states(alerts.evaluate()) == [("firing", "api-errors", None)]


def test_route_filter_naming_an_unknown_route_fails_at_start() -> None:
    config = AlertsConfig(
        enabled=True,
        rules=[AlertRuleConfig(name="x", kind="error_rate", threshold=5, routes=["nope"])],
    )
    with pytest.raises(ValueError, match="unknown routes: nope"):
        AlertEngine(config, Metrics(), routes=RouteTable([]))


def test_fire_after_needs_the_condition_to_hold_that_long() -> None:
    alerts, clock, _ = engine_for(
        {"name": "bans", "kind": "bans", "threshold": 0, "window": 300, "fire_after": 20}
    )
    alerts.observe_event(event("ratelimit.banned"))
    assert alerts.evaluate() == []
    clock.advance(19)
    assert alerts.evaluate() == []
    clock.advance(1)
    assert states(alerts.evaluate()) == [("firing", "bans", None)]


def test_pending_condition_that_stops_does_not_fire() -> None:
    alerts, clock, _ = engine_for(
        {"name": "waf", "kind": "waf_blocks", "threshold": 1, "window": 10, "fire_after": 15}
    )
    feed(alerts, "waf_blocks", "inspect.blocked", 2)
    assert alerts.evaluate() == []
    clock.advance(11)  # the window emptied before fire_after elapsed
    assert alerts.evaluate() == []
    clock.advance(30)
    assert alerts.evaluate() == []


def test_resolve_after_keeps_a_flapping_value_in_one_episode() -> None:
    alerts, clock, _ = engine_for(
        {"name": "auth", "kind": "auth_failures", "threshold": 2, "window": 10, "resolve_after": 30}
    )
    feed(alerts, "auth_failures", "auth.login.failed", 3)
    assert len(alerts.evaluate()) == 1
    for _ in range(4):  # below for 15s, above again, below…: never resolved, never re-fired
        clock.advance(11)
        assert alerts.evaluate() == []
        clock.advance(4)
        feed(alerts, "auth_failures", "auth.login.failed", 3)
        assert alerts.evaluate() == []
    clock.advance(11)
    assert alerts.evaluate() == []
    clock.advance(30)
    assert states(alerts.evaluate()) == [("resolved", "auth", None)]


# -- per-address rules ----------------------------------------------------------------------


def test_per_ip_episodes_are_independent() -> None:
    alerts, clock, _ = engine_for(
        {
            "name": "brute",
            "kind": "auth_failures",
            "threshold": 3,
            "per": "ip",
            "window": 60,
            "resolve_after": 0,
        }
    )
    for _ in range(4):
        alerts.observe_event(event("auth.login.failed", "203.0.113.1"))
    for _ in range(2):
        alerts.observe_event(event("auth.login.failed", "203.0.113.2"))
    assert states(alerts.evaluate()) == [("firing", "brute", "203.0.113.1")]
    for _ in range(2):
        alerts.observe_event(event("auth.login.failed", "203.0.113.2"))
        alerts.observe_event(event("auth.login.failed", "203.0.113.1"))
    assert states(alerts.evaluate()) == [("firing", "brute", "203.0.113.2")]
    clock.advance(61)
    resolved = alerts.evaluate()
    assert sorted(states(resolved)) == [
        ("resolved", "brute", "203.0.113.1"),
        ("resolved", "brute", "203.0.113.2"),
    ]
    assert alerts.evaluate() == []


def test_rotating_addresses_cannot_grow_memory_or_hide_an_active_one() -> None:
    alerts, clock, _ = engine_for(
        {"name": "waf-ip", "kind": "waf_blocks", "threshold": 5, "per": "ip", "window": 60},
        max_tracked_ips=3,
    )
    rule = alerts.rules[0]
    for _ in range(4):
        alerts.observe_event(event("inspect.blocked", "192.0.2.1"))
    for index in range(10_000):  # one block from each of many addresses
        alerts.observe_event(event("inspect.blocked", f"10.{index // 256 % 256}.{index % 256}.9"))
    for _ in range(2):
        alerts.observe_event(event("inspect.blocked", "192.0.2.1"))
    assert len(rule.clients) == 3  # type: ignore[union-attr]
    assert "192.0.2.1" in rule.clients  # type: ignore[union-attr]
    fired = states(alerts.evaluate())
    assert ("firing", "waf-ip", "192.0.2.1") in fired  # its 6 blocks were not erased
    assert ("firing", "waf-ip", OTHER) in fired  # the rotation itself is visible
    clock.advance(61)
    alerts.observe_event(event("inspect.blocked", "198.51.100.77"))
    assert "198.51.100.77" in rule.clients  # type: ignore[union-attr]


def test_events_without_a_client_address_count_as_other() -> None:
    alerts, _, _ = engine_for(
        {"name": "bans-ip", "kind": "bans", "threshold": 1, "per": "ip"},
    )
    alerts.observe_event(event("ratelimit.banned", None))
    alerts.observe_event(event("ratelimit.banned", None))
    assert states(alerts.evaluate()) == [("firing", "bans-ip", OTHER)]


def test_overall_and_per_ip_rules_over_the_same_events() -> None:
    alerts, _, _ = engine_for(
        {"name": "all", "kind": "auth_failures", "threshold": 5},
        {"name": "each", "kind": "auth_failures", "threshold": 5, "per": "ip"},
    )
    for index in range(6):
        alerts.observe_event(event("auth.login.failed", f"203.0.113.{index}"))
    assert states(alerts.evaluate()) == [("firing", "all", None)]


# -- windows ----------------------------------------------------------------------------------


def test_sliding_count_forgets_slots_older_than_the_window() -> None:
    counts = SlidingCount(60.0, 60)
    for second in range(120):
        counts.add(1000.0 + second)
    assert counts.total(1119.0) == 60
    assert counts.total(1150.0) == 29
    assert counts.total(1180.0) == 0
    assert counts.idle(1180.0)
    assert not counts.idle(1170.0)


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([1.0, 7.0, 60.0, 90.0, 300.0]),
    gaps=st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=1, max_size=80),
    later=st.floats(min_value=0.0, max_value=400.0),
)
def test_sliding_count_is_the_exact_count_to_within_one_slot(
    window: float, gaps: list[float], later: float
) -> None:
    counts = SlidingCount(window, 60)
    width = window / min(60, int(window))
    times: list[float] = []
    now = 500.0
    for gap in gaps:
        now += gap
        times.append(now)
        counts.add(now)
    now += later
    total = counts.total(now)
    assert total == sum(1 for t in times if int(t / width) > int(now / width) - window / width)
    assert sum(1 for t in times if t > now - window + width) <= total
    assert total <= sum(1 for t in times if t > now - window - width)


def test_a_long_window_keeps_sixty_slots() -> None:
    counts = SlidingCount(3600.0, 60)
    for minute in range(180):
        counts.add(minute * 60.0, 2)
    assert len(counts._counts) == 60
    assert counts.total(179 * 60.0) == 120


# -- delivery to the log and listeners ---------------------------------------------------------


def test_each_transition_is_one_log_line() -> None:
    alerts, clock, _ = engine_for(
        {"name": "waf", "kind": "waf_blocks", "threshold": 0, "resolve_after": 0, "window": 10}
    )
    seen: list[Alert] = []
    alerts.listeners.append(seen.append)
    with capture_logs() as logs:
        alerts.observe_event(event("inspect.blocked"))
        alerts.evaluate()
        clock.advance(11)
        alerts.evaluate()
    lines = [(line["event"], line["log_level"], line["rule"]) for line in logs]
    assert lines == [("alert firing", "warning", "waf"), ("alert resolved", "info", "waf")]
    assert [a.state for a in seen] == ["firing", "resolved"]
    payload = seen[1].payload("host-1")
    assert payload["type"] == "alert.resolved"
    assert payload["data"]["id"] == seen[0].episode
    assert payload["data"]["unit"] == "events"
    assert payload["data"]["instance"] == "host-1"
    assert payload["timestamp"].endswith("Z")


# -- the audit sink wrapper ------------------------------------------------------------------


async def test_sink_forwards_every_event_unchanged() -> None:
    alerts, _, _ = engine_for({"name": "waf", "kind": "waf_blocks", "threshold": 0})
    inner = MemoryAuditSink()
    sink = alerts.audit_sink(inner)
    sent = [event("inspect.blocked"), event("admin.user.disabled"), event("auth.login.failed")]
    for item in sent:
        await sink.emit(item)
    assert inner.events == sent
    assert sink.kinds() == inner.kinds()  # the inner sink's own methods stay reachable
    assert states(alerts.evaluate()) == [("firing", "waf", None)]


async def test_sink_never_fails_the_inner_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    alerts, _, _ = engine_for({"name": "waf", "kind": "waf_blocks", "threshold": 0})
    inner = MemoryAuditSink()

    def broken(event: AuditEvent) -> None:
        raise RuntimeError("observer bug")

    monkeypatch.setattr(alerts, "observe_event", broken)
    await AlertingAuditSink(inner, alerts).emit(event("inspect.blocked"))
    assert inner.kinds() == ["inspect.blocked"]


# -- wiring ----------------------------------------------------------------------------------


def test_disabled_alerts_leave_nothing_in_the_path() -> None:
    engine = Bastion(Settings())
    assert engine.alerts is None
    assert type(engine._observer) is RequestObserver
    assert not isinstance(engine.deps.audit, AlertingAuditSink)
    assert engine.metrics.store_error_listener is None


def test_enabled_alerts_hook_the_observer_the_sink_and_store_errors() -> None:
    settings = Settings(alerts=AlertsConfig(enabled=True))
    engine = Bastion(settings)
    assert engine.alerts is not None
    assert [rule.config for rule in engine.alerts.rules] == list(BUILTIN_RULES)
    assert isinstance(engine._observer, AlertingObserver)
    assert isinstance(engine.deps.audit, AlertingAuditSink)
    clock = Clock()
    engine.alerts.clock = clock
    for _ in range(6):
        engine.metrics.store_error("redis", "ratelimit")
    assert states(engine.alerts.evaluate()) == [("firing", "store-errors", None)]


def test_event_rules_only_need_no_request_hook() -> None:
    rules = [AlertRuleConfig(name="waf", kind="waf_blocks", threshold=5)]
    engine = Bastion(Settings(alerts=AlertsConfig(enabled=True, rules=rules)))
    assert type(engine._observer) is RequestObserver
    assert engine.metrics.store_error_listener is None


# -- configuration ---------------------------------------------------------------------------

BAD_RULES = [
    ("per-ip-error-rate", {"kind": "error_rate", "threshold": 5, "per": "ip"}, "per"),
    ("per-ip-store", {"kind": "store_errors", "threshold": 5, "per": "ip"}, "per"),
    ("routes-on-events", {"kind": "waf_blocks", "threshold": 5, "routes": ["api"]}, "routes"),
    ("rate-100", {"kind": "error_rate", "threshold": 100}, "percentage"),
    ("negative", {"kind": "bans", "threshold": -1}, "greater than or equal"),
    ("short-window", {"kind": "bans", "threshold": 1, "window": "500ms"}, "window"),
    ("long-window", {"kind": "bans", "threshold": 1, "window": "2d"}, "window"),
    ("unknown-kind", {"kind": "cpu", "threshold": 1}, "kind"),
    ("bad-name", {"kind": "bans", "threshold": 1, "name": "Bad Name"}, "rule name"),
    ("zero-min", {"kind": "error_rate", "threshold": 1, "min_requests": 0}, "min_requests"),
]


@pytest.mark.parametrize(("case", "rule", "message"), BAD_RULES, ids=[c[0] for c in BAD_RULES])
def test_incoherent_rules_are_refused(case: str, rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertRuleConfig(**{"name": "r", **rule})


BAD_ALERTS = [
    ("interval", {"interval": "10ms"}, "interval"),
    (
        "duplicate",
        {"rules": [{"name": "a", "kind": "bans", "threshold": 1}] * 2},
        "two alert rules",
    ),
    ("url-without-secret", {"webhook": {"url": "https://hooks.example.com/x"}}, "secret"),
    ("not-http", {"webhook": {"url": "ftp://x", "secret": SECRET}}, "http"),
    ("short-secret", {"webhook": {"url": "https://h/x", "secret": "whsec_c2hvcnQ="}}, "24"),
    ("not-base64", {"webhook": {"url": "https://h/x", "secret": "whsec_***"}}, "base64"),
    (
        "previous-not-base64",
        {"webhook": {"url": "https://h/x", "secret": SECRET, "previous_secrets": ["nope!"]}},
        "base64",
    ),
    (
        "backoff",
        {"webhook": {"url": "https://h/x", "secret": SECRET, "backoff": 10, "max_backoff": 1}},
        "max_backoff",
    ),
    ("unknown-key", {"threshold": 3}, "Extra inputs"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_ALERTS, ids=[c[0] for c in BAD_ALERTS])
def test_bad_alert_sections_are_refused(case: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertsConfig(enabled=True, **data)


def test_alerts_from_toml(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    path = tmp_path / "bastion.toml"
    path.write_text(
        """
[alerts]
enabled = true
interval = "2s"

[[alerts.rules]]
name = "brute-force"
kind = "auth_failures"
threshold = 10
window = "1m"
per = "ip"
resolve_after = "5m"

[alerts.webhook]
url = "https://hooks.example.com/bastion"
secret = "env:HOOK_SECRET"
max_attempts = 3
"""
    )
    settings = Settings.from_file(path)
    alerts = settings.alerts
    assert alerts.interval == 2.0
    assert alerts.rules[0].per == "ip"
    assert alerts.rules[0].resolve_after == 300.0
    assert alerts.webhook.secret is not None
    assert alerts.webhook.secret.get_secret_value() == SECRET
    assert SECRET not in str(settings.redacted())

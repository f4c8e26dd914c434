"""Regression tests for the alerting review: configuration limits, per-network keys, eviction
around active clients, restarts on a new event loop, and failures that must stay contained."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from structlog.testing import capture_logs
from typer.testing import CliRunner

from bastion import Bastion, Settings
from bastion.audit.events import AuditEvent
from bastion.cli.app import app
from bastion.http.state import RequestState
from bastion.observe.alert_rules import Alert, PerIpRule
from bastion.observe.alerts import AlertEngine, AlertingObserver
from bastion.observe.config import AlertRuleConfig, AlertsConfig, AlertWebhookConfig
from bastion.observe.metrics import Metrics
from bastion.observe.webhook import WebhookSender
from bastion.proxy.config import RouteConfig
from bastion.settings import ConfigError
from observe.alert_harness import Clock, engine_for

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def failed_login(ip: str | None) -> AuditEvent:
    return AuditEvent(kind="auth.login.failed", client_ip=ip)


def config_errors(**data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        Settings.load(None, **data)
    return caught.value.errors


# -- 1. windows shorter than two evaluation intervals -----------------------------------------

WINDOWS = [
    # id, interval, window, accepted
    ("equal", "5s", "5s", False),
    ("just-below-twice", "5s", "9.9s", False),
    ("twice", "5s", "10s", True),
    ("sub-second-interval", "100ms", "1s", True),
    ("long-interval", "1h", "1d", True),
    ("long-interval-short-window", "1h", "1h", False),
]


@pytest.mark.parametrize(
    ("case", "interval", "window", "accepted"), WINDOWS, ids=[w[0] for w in WINDOWS]
)
def test_window_must_be_at_least_twice_the_interval(
    case: str, interval: str, window: str, accepted: bool
) -> None:
    rules = [
        {"name": "ok", "kind": "bans", "threshold": 1, "window": "1d"},
        {"name": "r", "kind": "bans", "threshold": 1, "window": window},
    ]
    data = {"alerts": {"enabled": True, "interval": interval, "rules": rules}}
    if accepted:
        assert Settings.load(None, **data).alerts.rules[1].window > 0
    else:
        [(key, message)] = config_errors(**data)
        assert key == "alerts"
        assert "alerts.rules.1.window" in message


def test_builtin_rules_bound_the_interval() -> None:
    assert AlertsConfig(enabled=True, interval="30s").interval == 30
    [(key, message)] = config_errors(alerts={"enabled": True, "interval": "31s"})
    assert key == "alerts"
    assert "30s" in message


# -- 2. per-IP rules key on the network -------------------------------------------------------

SAME_CLIENT = [
    # id, addresses that must count as one client, the key they share
    ("ipv6-same-64", ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:DB8:1:2::abcd"],
     "2001:db8:1:2::/64"),
    ("ipv4-mapped", ["198.51.100.4", "::ffff:198.51.100.4", "::ffff:c633:6404"], "198.51.100.4"),
    ("ipv6-zone-id", ["fe80::1%eth0", "fe80::2"], "fe80::/64"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "addresses", "key"), SAME_CLIENT, ids=[c[0] for c in SAME_CLIENT])
def test_per_ip_rules_count_a_network_as_one_client(
    case: str, addresses: list[str], key: str
) -> None:
    threshold = len(addresses) - 1
    alerts, _, _ = engine_for(
        {"name": "ip", "kind": "auth_failures", "threshold": threshold, "per": "ip"}
    )
    for address in addresses:
        alerts.observe_event(failed_login(address))
    fired = alerts.evaluate()
    assert [(a.state, a.client_ip) for a in fired] == [("firing", key)]


def test_neighbouring_ipv6_networks_stay_apart() -> None:
    alerts, _, _ = engine_for({"name": "ip", "kind": "auth_failures", "threshold": 1, "per": "ip"})
    alerts.observe_event(failed_login("2001:db8:1:2::1"))
    alerts.observe_event(failed_login("2001:db8:1:3::1"))
    assert alerts.evaluate() == []


# -- 3. active clients never block eviction ---------------------------------------------------


def test_an_active_client_does_not_block_eviction_of_idle_ones() -> None:
    alerts, clock, _ = engine_for(
        {"name": "ip", "kind": "auth_failures", "threshold": 0, "per": "ip", "window": "1m",
         "resolve_after": "1h"},
        max_tracked_ips=2,
    )  # fmt: skip
    rule = alerts.rules[0]
    assert isinstance(rule, PerIpRule)
    alerts.observe_event(failed_login("192.0.2.1"))  # the oldest entry, soon active
    alerts.evaluate()
    alerts.observe_event(failed_login("192.0.2.2"))
    clock.now += 120  # both idle for a whole window
    alerts.evaluate()
    assert rule.pinned["192.0.2.1"].episode.clear_since is not None  # firing, clearing
    alerts.observe_event(failed_login("192.0.2.3"))
    assert "192.0.2.3" in rule.clients  # tracked on its own, not folded into "other"
    assert "192.0.2.2" not in rule.clients
    assert rule.other.counts.total(clock.now) == 0
    assert len(rule) == 2


def test_a_client_whose_episode_ends_rejoins_the_eviction_order() -> None:
    alerts, clock, _ = engine_for(
        {"name": "ip", "kind": "auth_failures", "threshold": 0, "per": "ip", "window": "1m",
         "resolve_after": "0s"},
        max_tracked_ips=1,
    )  # fmt: skip
    rule = alerts.rules[0]
    assert isinstance(rule, PerIpRule)
    alerts.observe_event(failed_login("192.0.2.1"))
    assert [a.state for a in alerts.evaluate()] == ["firing"]
    alerts.observe_event(failed_login("192.0.2.2"))  # the table is full of an active client
    assert rule.other.counts.total(clock.now) == 1
    clock.now += 120
    assert [(a.state, a.client_ip) for a in alerts.evaluate()] == [("resolved", "192.0.2.1")]
    alerts.observe_event(failed_login("192.0.2.3"))
    assert list(rule.clients) == ["192.0.2.3"]
    assert rule.pinned == {}


def test_a_recently_seen_client_is_evicted_last() -> None:
    alerts, clock, _ = engine_for(
        {"name": "ip", "kind": "auth_failures", "threshold": 50, "per": "ip", "window": "1m"},
        max_tracked_ips=2,
    )
    rule = alerts.rules[0]
    assert isinstance(rule, PerIpRule)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
        alerts.observe_event(failed_login(address))
    clock.now += 120
    alerts.observe_event(failed_login("192.0.2.3"))
    assert list(rule.clients) == ["192.0.2.1", "192.0.2.3"]


def test_max_tracked_ips_is_capped() -> None:
    assert AlertsConfig(max_tracked_ips=100_000).max_tracked_ips == 100_000
    with pytest.raises(ValidationError):
        AlertsConfig(max_tracked_ips=100_001)


# -- 4 and 8. durations have bounds -----------------------------------------------------------

BAD_WEBHOOK_DURATIONS = [
    ("timeout-zero", {"timeout": 0}),
    ("timeout-zero-text", {"timeout": "0s"}),
    ("timeout-huge", {"timeout": 1e12}),
    ("backoff-huge", {"backoff": 1e12, "max_backoff": 1e12}),
    ("max-backoff-huge", {"max_backoff": 1e300}),
]


@pytest.mark.parametrize(
    ("case", "values"), BAD_WEBHOOK_DURATIONS, ids=[b[0] for b in BAD_WEBHOOK_DURATIONS]
)
def test_webhook_durations_are_bounded(case: str, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertWebhookConfig(url="https://hooks.example/a", secret=SECRET, **values)


def test_interval_is_bounded() -> None:
    with pytest.raises(ValidationError):
        AlertsConfig(interval=1e12)


BAD_RULE_VALUES = [
    ("threshold-inf", {"threshold": float("inf")}),
    ("threshold-nan", {"threshold": float("nan")}),
    ("threshold-huge", {"threshold": 1e300}),
    ("fire-after-huge", {"fire_after": 1e12}),
    ("resolve-after-huge", {"resolve_after": "1000d"}),
]


@pytest.mark.parametrize(("case", "values"), BAD_RULE_VALUES, ids=[b[0] for b in BAD_RULE_VALUES])
def test_rule_values_are_finite_and_bounded(case: str, values: dict[str, Any]) -> None:
    rule = {"name": "r", "kind": "bans", "threshold": 1, **values}
    with pytest.raises(ValidationError):
        AlertRuleConfig(**rule)


# -- 6. unknown route names fail at load, naming the key --------------------------------------


def test_unknown_alert_routes_fail_at_settings_load() -> None:
    routes = [{"name": "api", "prefix": "/api", "upstream": "http://127.0.0.1:9"}]
    rules = [
        {"name": "ok", "kind": "error_rate", "threshold": 5, "routes": ["api", "_none"]},
        {"name": "bad", "kind": "latency_p95", "threshold": 100, "routes": ["api", "nope"]},
    ]
    errors = config_errors(routes=routes, alerts={"enabled": True, "rules": rules})
    assert errors == [("alerts.rules.1.routes", "unknown route names: ['nope']")]
    settings = Settings.load(None, routes=routes, alerts={"enabled": True, "rules": rules[:1]})
    assert Bastion(settings).alerts is not None
    assert settings.routes == [RouteConfig(**routes[0])]


def test_config_check_exits_2_naming_the_rule(tmp_path: Any) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text(
        "[alerts]\nenabled = true\n[[alerts.rules]]\n"
        'name = "r"\nkind = "error_rate"\nthreshold = 5\nroutes = ["missing"]\n'
    )
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "alerts.rules.0.routes" in result.output


# -- 7. webhook URLs are parsed ---------------------------------------------------------------

URLS = [
    # id, url, accepted
    ("https", "https://hooks.example/alerts", True),
    ("http-port", "http://127.0.0.1:8080/hook?x=1", True),
    ("ipv6", "https://[2001:db8::1]:8443/hook", True),
    ("ftp", "ftp://hooks.example/", False),
    ("no-scheme", "hooks.example/alerts", False),
    ("no-host", "https:///alerts", False),
    ("only-port", "https://:443/alerts", False),
    ("userinfo-no-host", "https://user@/alerts", False),
    ("space", "https://hooks.example/a b", False),
    ("leading-space", " https://hooks.example/", False),
    ("newline", "https://hooks.example/\nX-Injected: 1", False),
    ("tab-in-host", "https://hooks.\texample/", False),
    ("port-out-of-range", "https://hooks.example:99999/", False),
    ("port-not-a-number", "https://hooks.example:http/", False),
    ("port-zero", "https://hooks.example:0/", False),
    ("unclosed-bracket", "https://[2001:db8::1/hook", False),
    ("stray-bracket", "https://hooks.example]/", False),
    ("fragment", "https://hooks.example/a#frag", False),
    ("uppercase-scheme", "HTTPS://hooks.example/", True),
]


@pytest.mark.parametrize(("case", "url", "accepted"), URLS, ids=[u[0] for u in URLS])
def test_webhook_url_validation(case: str, url: str, accepted: bool) -> None:
    if accepted:
        assert AlertWebhookConfig(url=url, secret=SECRET).url == url
    else:
        with pytest.raises(ValidationError):
            AlertWebhookConfig(url=url, secret=SECRET)


# -- 5. restarts on a new event loop ----------------------------------------------------------


async def _receive(count: int, config: AlertWebhookConfig, sender: WebhookSender) -> list[bytes]:
    bodies: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) >= count:
            arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sender._url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        await sender.start()
        sender.submit({"n": count})
        await asyncio.wait_for(arrived.wait(), 10)
        await sender.close()
    finally:
        await runner.cleanup()
    return bodies


def test_the_sender_delivers_again_after_a_restart_on_a_new_loop() -> None:
    config = AlertWebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET)
    metrics = Metrics()
    sender = WebhookSender(config, metrics)
    assert asyncio.run(_receive(1, config, sender)) == [b'{"n":1}']
    assert asyncio.run(_receive(1, config, sender)) == [b'{"n":1}']
    assert (
        metrics.registry.get_sample_value(
            "bastion_alerts_webhook_deliveries_total", {"result": "delivered"}
        )
        == 2
    )


def test_close_on_a_new_loop_tolerates_a_task_left_on_a_dead_one() -> None:
    config = AlertWebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET)
    alerts = AlertEngine(AlertsConfig(enabled=True, webhook=config), Metrics(), clock=Clock())

    async def start_only() -> None:
        await alerts.start()

    asyncio.run(start_only())  # the loop ends with both tasks still pending
    asyncio.run(alerts.close())
    assert alerts.webhook is not None
    assert alerts.webhook.pending == 0


def test_shutdown_closes_the_rest_when_alerts_fail_to_close(tmp_path: Any) -> None:
    settings = Settings(
        store={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"},
        alerts={"enabled": True},
    )
    engine = Bastion(settings)
    assert engine.alerts is not None

    async def broken_close() -> None:
        raise RuntimeError("boom")

    async def run() -> None:
        await engine.startup()
        assert engine._started
        await engine.shutdown()

    engine.alerts.close = broken_close  # type: ignore[method-assign]
    with capture_logs() as logs:
        asyncio.run(run())
    assert not engine._started  # the last step of shutdown ran
    assert any(line["event"] == "alerts close failed" for line in logs)


# -- minor: contained failures ----------------------------------------------------------------


def test_one_failed_delivery_does_not_lose_the_others() -> None:
    alerts, _, _ = engine_for(
        {"name": "a", "kind": "bans", "threshold": 0},
        {"name": "b", "kind": "waf_blocks", "threshold": 0},
    )
    delivered: list[str] = []
    original = alerts._deliver

    def flaky(alert: Alert) -> None:
        if alert.rule.name == "a":
            raise RuntimeError("boom")
        delivered.append(alert.rule.name)
        original(alert)

    alerts._deliver = flaky  # type: ignore[method-assign]
    alerts.observe_event(AuditEvent(kind="ratelimit.banned", client_ip="192.0.2.1"))
    alerts.observe_event(AuditEvent(kind="inspect.blocked", client_ip="192.0.2.1"))
    with capture_logs() as logs:
        fired = alerts.evaluate()
    assert [a.rule.name for a in fired] == ["a", "b"]
    assert delivered == ["b"]
    assert [line["event"] for line in logs if line["log_level"] == "error"] == [
        "alert delivery failed"
    ]


def test_a_failing_alert_hook_never_fails_a_request() -> None:
    alerts, _, metrics = engine_for({"name": "e", "kind": "error_rate", "threshold": 5})

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    alerts.observe_request = broken  # type: ignore[method-assign]
    observer = alerts.observer(metrics, access_log=False)
    assert isinstance(observer, AlertingObserver)
    scope: Any = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with capture_logs() as logs:
        for _ in range(3):
            state = RequestState("r" * 32, 0.0, "198.51.100.1", "http")
            observer.finish(scope, state, 200, 0, 0)
    assert [line["event"] for line in logs if line["log_level"] == "error"] == [
        "alert request observation failed"
    ]


async def test_alerts_queued_behind_a_gone_are_counted_as_dropped() -> None:
    statuses = [410]

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=statuses[0])

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    metrics = Metrics()
    sender = WebhookSender(AlertWebhookConfig(url=url, secret=SECRET), metrics)
    try:
        for index in range(3):
            sender.submit({"n": index})  # queued before the task runs
        await sender.start()
        for _ in range(500):
            if not sender.enabled:
                break
            await asyncio.sleep(0.01)
        await sender.close()
    finally:
        await runner.cleanup()

    def count(result: str) -> float:
        value = metrics.registry.get_sample_value(
            "bastion_alerts_webhook_deliveries_total", {"result": result}
        )
        return value or 0.0

    assert not sender.enabled
    assert count("failed") == 1
    assert count("dropped") == 2


# -- 11. Bastion's own refusals do not dilute the ratio rules ---------------------------------

REFUSALS = [
    # id, status, problem code set by a stage, counted with exclude_refusals
    ("rate-limited", 429, "rate_limited", False),
    ("blocked", 403, "request_blocked", False),
    ("banned", 403, "client_banned", False),
    ("unauthenticated", 401, "unauthorized", False),
    ("application-404", 404, None, True),
    ("application-500", 500, None, True),
    ("upstream-unavailable", 502, "upstream_unavailable", True),
    ("shed", 503, "overloaded", True),
]


@pytest.mark.parametrize(
    ("case", "status", "code", "counted"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
@pytest.mark.parametrize("exclude", [True, False])
def test_refusals_are_left_out_of_ratio_rules(
    case: str, status: int, code: str | None, counted: bool, exclude: bool
) -> None:
    alerts, clock, _ = engine_for(
        {"name": "e", "kind": "error_rate", "threshold": 5, "min_requests": 1},
        exclude_refusals=exclude,
    )
    shared: dict[str, Any] = {} if code is None else {"bastion.problem": code}
    state = RequestState("r" * 32, 0.0, "198.51.100.1", "http")
    alerts.observe_request({"type": "http", "state": shared}, state, status)
    rule = alerts.rules[0]
    reading = rule.read(clock.now)  # type: ignore[union-attr]
    assert reading.requests == (1 if counted or not exclude else 0)


def test_a_refused_flood_does_not_dilute_the_error_rate() -> None:
    alerts, _, _ = engine_for(
        {"name": "e", "kind": "error_rate", "threshold": 5, "min_requests": 10}
    )
    state = RequestState("r" * 32, 0.0, "198.51.100.1", "http")
    for _ in range(10):
        alerts.observe_request({"type": "http", "state": {}}, state, 500)
    for _ in range(1000):
        alerts.observe_request(
            {"type": "http", "state": {"bastion.problem": "rate_limited"}}, state, 429
        )
    assert [(a.state, a.value) for a in alerts.evaluate()] == [("firing", 100.0)]

"""Alerts on synthetic traffic through the real pipeline: errors, latency, refused logins and
blocked attacks fire once and resolve, and the webhook receives signed payloads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion import Bastion, Settings
from bastion.observe.alert_rules import Alert
from bastion.observe.config import AlertRuleConfig, AlertsConfig, AlertWebhookConfig
from bastion.observe.webhook import verify
from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.store.config import StoreConfig


class Clock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def broken(request: Request) -> Response:
    return PlainTextResponse("down", status_code=503)


class RequestTimer:
    """The ``time`` module as the pipeline's request timing sees it: ``perf_counter`` stands
    still except when the slow route moves it, so a request takes as long as the test says and
    not as long as a slow machine needs (which could push the fast requests' p95 over the
    threshold)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


TIMER = RequestTimer()


@pytest.fixture
def request_timer(monkeypatch: pytest.MonkeyPatch) -> RequestTimer:
    """Where a request starts (``request_id``) and where its duration is read (the alert engine
    and the access log), time is :data:`TIMER`."""
    for module in (
        "bastion.pipeline.request_id",
        "bastion.observe.alerts",
        "bastion.observe.access",
    ):
        monkeypatch.setattr(f"{module}.time", TIMER)
    return TIMER


async def slow(request: Request) -> Response:
    TIMER.now += 0.06
    return PlainTextResponse("slow")


APP = Starlette(routes=[Route("/ok", ok), Route("/broken", broken), Route("/slow", slow)])


@pytest.fixture
def store(tmp_path: Path) -> StoreConfig:
    return StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}")


def protected(store: StoreConfig, *rules: AlertRuleConfig, **sections: Any) -> Bastion:
    # The longest interval the shortest window here (60s) allows: the tests evaluate by hand.
    alerts = AlertsConfig(enabled=True, interval="30s", rules=list(rules))
    return Bastion(Settings(store=store, alerts=alerts, **sections))


def record(engine: Bastion) -> tuple[Clock, list[Alert]]:
    assert engine.alerts is not None
    clock = Clock()
    engine.alerts.clock = clock
    seen: list[Alert] = []
    engine.alerts.listeners.append(seen.append)
    return clock, seen


def summary(seen: list[Alert]) -> list[tuple[str, str]]:
    return [(alert.state, alert.rule.name) for alert in seen]


def test_error_rate_and_latency_through_the_pipeline(
    store: StoreConfig, request_timer: RequestTimer
) -> None:
    engine = protected(
        store,
        AlertRuleConfig(
            name="errors", kind="error_rate", threshold=20, min_requests=10, resolve_after=0
        ),
        AlertRuleConfig(
            name="slow", kind="latency_p95", threshold=40, min_requests=10, resolve_after=0
        ),
    )
    clock, seen = record(engine)
    assert engine.alerts is not None
    with TestClient(engine.wrap(APP)) as client:
        for _ in range(12):
            assert client.get("/ok").status_code == 200
        engine.alerts.evaluate()
        assert seen == []
        for _ in range(4):
            assert client.get("/broken").status_code == 503
        for _ in range(2):
            assert client.get("/slow").status_code == 200
        engine.alerts.evaluate()
        assert summary(seen) == [("firing", "errors"), ("firing", "slow")]
        errors, latency = seen
        assert errors.value == pytest.approx(100 * 4 / 18)
        assert latency.value >= 50.0  # the upper edge of the 60 ms requests' bucket
        engine.alerts.evaluate()
        assert len(seen) == 2  # quiet while it holds
        clock.now += 61
        for _ in range(20):
            client.get("/ok")
        engine.alerts.evaluate()
    assert summary(seen[2:]) == [("resolved", "errors"), ("resolved", "slow")]


def test_refused_logins_fire_per_address(store: StoreConfig) -> None:
    engine = protected(
        store,
        AlertRuleConfig(
            name="brute-force", kind="auth_failures", threshold=3, per="ip", resolve_after=0
        ),
    )
    clock, seen = record(engine)
    assert engine.alerts is not None
    with TestClient(engine.wrap(APP)) as client:
        for attempt in range(4):
            response = client.post(
                "/_bastion/auth/login",
                json={"username": "nobody@example.com", "password": f"guess-{attempt}"},
            )
            assert response.status_code in (401, 429)
        engine.alerts.evaluate()
        engine.alerts.evaluate()
        clock.now += 61
        engine.alerts.evaluate()
    assert summary(seen) == [("firing", "brute-force"), ("resolved", "brute-force")]
    assert seen[0].client_ip == "testclient"
    assert seen[0].value == 4


def test_blocked_attacks_fire(store: StoreConfig) -> None:
    engine = protected(
        store, AlertRuleConfig(name="waf", kind="waf_blocks", threshold=2, resolve_after=0)
    )
    clock, seen = record(engine)
    assert engine.alerts is not None
    with TestClient(engine.wrap(APP)) as client:
        for attack in ("<script>alert(document.cookie)</script>", "1' OR '1'='1' --"):
            response = client.get("/ok", params={"q": attack})
            assert response.status_code == 403
        engine.alerts.evaluate()
        assert seen == []
        client.get("/ok", params={"q": "../../../../etc/passwd"})
        assert client.get("/ok", params={"q": "fine"}).status_code == 200
        engine.alerts.evaluate()
        clock.now += 61
        engine.alerts.evaluate()
    assert summary(seen) == [("firing", "waf"), ("resolved", "waf")]
    assert seen[0].value == 3


def test_bans_fire(store: StoreConfig) -> None:
    # An hour-long window on the real clock: the eight requests all fall in it (a slow run could
    # cross from one minute's window into the next and be let through again).
    policy = PolicyConfig(name="tight", key="ip", algorithm="fixed_window", limit=2, period=3600)
    engine = protected(
        store,
        AlertRuleConfig(name="bans", kind="bans", threshold=0, resolve_after=0, window=600),
        ratelimit=RateLimitConfig(
            policies=[policy], bans={"enabled": True, "threshold": 3, "window": 60}
        ),
    )
    clock, seen = record(engine)
    assert engine.alerts is not None
    with TestClient(engine.wrap(APP)) as client:
        statuses = [client.get("/ok").status_code for _ in range(8)]
        assert statuses[:2] == [200, 200]
        assert set(statuses[2:]) == {429}
        engine.alerts.evaluate()
        engine.alerts.evaluate()
        clock.now += 601
        engine.alerts.evaluate()
    assert summary(seen) == [("firing", "bans"), ("resolved", "bans")]


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("RecordingHook", (Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_running_engine_evaluates_and_posts_on_its_own(
    store: StoreConfig, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = hook
    alerts = AlertsConfig(
        enabled=True,
        interval="100ms",
        rules=[AlertRuleConfig(name="waf", kind="waf_blocks", threshold=0)],
        webhook=AlertWebhookConfig(url=url, secret=SECRET),
    )
    engine = Bastion(Settings(store=store, alerts=alerts))
    with TestClient(engine.wrap(APP)) as client:
        response = client.get("/ok", params={"q": "<script>alert(document.cookie)</script>"})
        assert response.status_code == 403
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(received) == 1
    headers, body = received[0]
    verify(SECRET, headers, body)
    payload = orjson.loads(body)
    assert payload["type"] == "alert.firing"
    assert payload["data"]["rule"] == "waf"
    assert payload["data"]["value"] == 1

"""The alert webhook: Standard Webhooks signatures (a published vector, a tampering table), and
delivery to a real receiver on loopback with retries, Retry-After, give-ups and a bounded queue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from bastion.audit.events import AuditEvent
from bastion.observe.alerts import AlertEngine
from bastion.observe.config import AlertRuleConfig, AlertsConfig, AlertWebhookConfig, webhook_key
from bastion.observe.metrics import Metrics
from bastion.observe.webhook import (
    WebhookSender,
    WebhookVerificationError,
    _retry_after,
    sign,
    verify,
)

# The Standard Webhooks reference libraries' own test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()


def test_signature_matches_the_published_vector() -> None:
    key = webhook_key(VECTOR_SECRET)
    assert sign([key], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    # and computed by hand, from the scheme's definition
    signed = f"{VECTOR_ID}.{VECTOR_TIMESTAMP}.".encode() + VECTOR_BODY
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    assert "v1," + base64.b64encode(digest).decode() == VECTOR_SIGNATURE


def test_secret_without_prefix_is_the_same_key() -> None:
    assert webhook_key(VECTOR_SECRET.removeprefix("whsec_")) == webhook_key(VECTOR_SECRET)


def vector_headers(**changes: str) -> dict[str, str]:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    headers.update(changes)
    return {name: value for name, value in headers.items() if value != "-"}


def test_the_vector_verifies() -> None:
    verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 10)
    upper = {name.upper(): value for name, value in vector_headers().items()}
    verify(VECTOR_SECRET, upper, VECTOR_BODY, now=VECTOR_TIMESTAMP)


_FORGED = sign([webhook_key(OTHER_SECRET)], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)

TAMPERED: list[tuple[str, dict[str, str], bytes, float, str]] = [
    # id, header changes, body, receiver clock minus the timestamp, reason
    ("body-changed", {}, b'{"test": 2432232315}', 0, "no matching signature"),
    ("body-reserialised", {}, b'{"test":2432232314}', 0, "no matching signature"),
    ("body-extra-byte", {}, VECTOR_BODY + b"\n", 0, "no matching signature"),
    (
        "timestamp-shifted",
        {"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)},
        VECTOR_BODY,
        0,
        "no matching signature",
    ),
    ("id-changed", {"webhook-id": VECTOR_ID + "x"}, VECTOR_BODY, 0, "no matching signature"),
    ("id-with-dot", {"webhook-id": "msg_a.1614265330"}, VECTOR_BODY, 0, "malformed webhook-id"),
    ("other-key", {"webhook-signature": _FORGED}, VECTOR_BODY, 0, "no matching signature"),
    ("replayed-late", {}, VECTOR_BODY, 301, "outside the tolerance"),
    ("from-the-future", {}, VECTOR_BODY, -301, "outside the tolerance"),
    (
        "timestamp-not-a-number",
        {"webhook-timestamp": "1614265330.0"},
        VECTOR_BODY,
        0,
        "malformed",
    ),
    ("timestamp-negative", {"webhook-timestamp": "-1"}, VECTOR_BODY, 0, "malformed"),
    ("timestamp-unicode", {"webhook-timestamp": "١٦١٤٢٦٥٣٣٠"}, VECTOR_BODY, 0, "malformed"),
    ("no-signature", {"webhook-signature": "-"}, VECTOR_BODY, 0, "missing"),
    ("no-id", {"webhook-id": "-"}, VECTOR_BODY, 0, "missing"),
    ("no-timestamp", {"webhook-timestamp": "-"}, VECTOR_BODY, 0, "missing"),
    (
        "wrong-version",
        {"webhook-signature": VECTOR_SIGNATURE.replace("v1,", "v2,")},
        VECTOR_BODY,
        0,
        "no matching signature",
    ),
    ("garbage-base64", {"webhook-signature": "v1,@@@@"}, VECTOR_BODY, 0, "no matching"),
    ("empty-signature", {"webhook-signature": "v1,"}, VECTOR_BODY, 0, "no matching signature"),
    (
        "truncated-signature",
        {"webhook-signature": VECTOR_SIGNATURE[:-8] + "="},
        VECTOR_BODY,
        0,
        "no matching signature",
    ),
]


@pytest.mark.parametrize(
    ("case", "changes", "body", "skew", "reason"), TAMPERED, ids=[t[0] for t in TAMPERED]
)
def test_tampered_deliveries_are_rejected(
    case: str, changes: dict[str, str], body: bytes, skew: float, reason: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(VECTOR_SECRET, vector_headers(**changes), body, now=VECTOR_TIMESTAMP + skew)


def test_rotation_signs_with_every_secret() -> None:
    keys = [webhook_key(VECTOR_SECRET), webhook_key(OLD_SECRET)]
    header = sign(keys, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert header.startswith(VECTOR_SIGNATURE + " v1,")
    for secret in (VECTOR_SECRET, OLD_SECRET):
        verify(
            secret,
            vector_headers(**{"webhook-signature": header}),
            VECTOR_BODY,
            now=VECTOR_TIMESTAMP,
        )
    with pytest.raises(WebhookVerificationError):
        verify(
            OTHER_SECRET,
            vector_headers(**{"webhook-signature": header}),
            VECTOR_BODY,
            now=VECTOR_TIMESTAMP,
        )


# -- a real receiver on loopback ------------------------------------------------------------


@dataclass
class Receiver:
    """An aiohttp server that answers from a script and verifies what it receives."""

    url: str = ""
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    """``(status, headers, delay)`` per request; the last entry repeats."""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        self.arrived.set()
        status, headers, delay = self.script[min(len(self.received), len(self.script)) - 1]
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def reached() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(reached(), timeout)

    def verified(self) -> list[dict[str, Any]]:
        """Every received body, after checking its signature as a receiver would."""
        bodies = []
        for headers, body in self.received:
            verify(VECTOR_SECRET, headers, body)
            bodies.append(orjson.loads(body))
        return bodies


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(script=[(200, {}, 0.0)])
    app = web.Application()
    app.router.add_post("/hook", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


class Sleeps:
    """Records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def sender(url: str, metrics: Metrics, sleeps: Sleeps, **config: Any) -> WebhookSender:
    settings = AlertWebhookConfig(url=url, secret=VECTOR_SECRET, **config)
    return WebhookSender(settings, metrics, sleep=sleeps, jitter=lambda: 1.0)


def deliveries(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "bastion_alerts_webhook_deliveries_total", {"result": result}
    )
    return value or 0.0


async def settle(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def run(target: WebhookSender, body: Callable[[], Awaitable[None]]) -> None:
    await target.start()
    try:
        await body()
    finally:
        await target.close()


async def test_retries_after_500s_with_the_same_id_and_fresh_signatures(
    receiver: Receiver,
) -> None:
    receiver.script = [(500, {}, 0.0), (503, {}, 0.0), (200, {}, 0.0)]
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps, backoff=0.5, max_backoff=30)

    async def body() -> None:
        target.submit({"type": "alert.firing", "data": {"rule": "r"}})
        await receiver.wait_for(3)
        await settle(lambda: deliveries(metrics, "delivered") == 1)

    await run(target, body)
    assert [b["type"] for b in receiver.verified()] == ["alert.firing"] * 3
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1
    assert ids.pop().startswith("msg_")
    assert all(h["Content-Type"] == "application/json" for h, _ in receiver.received)
    assert sleeps.delays == [0.5, 1.0]  # doubled each time (jitter pinned to its maximum)
    assert deliveries(metrics, "retried") == 2


async def test_retry_after_is_honoured_up_to_max_backoff(receiver: Receiver) -> None:
    receiver.script = [
        (429, {"Retry-After": "7"}, 0.0),
        (503, {"Retry-After": "3600"}, 0.0),
        (200, {}, 0.0),
    ]
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps, backoff=1, max_backoff=60)

    async def body() -> None:
        target.submit({"type": "alert.firing"})
        await settle(lambda: deliveries(metrics, "delivered") == 1)

    await run(target, body)
    assert sleeps.delays == [7.0, 60.0]


@pytest.mark.parametrize("status", [400, 401, 404, 301])
async def test_other_statuses_are_not_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {"Location": "http://127.0.0.1:9/"}, 0.0)]
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps)

    async def body() -> None:
        target.submit({"type": "alert.firing"})
        await settle(lambda: deliveries(metrics, "failed") == 1)

    await run(target, body)
    assert len(receiver.received) == 1
    assert sleeps.delays == []


async def test_gone_turns_the_webhook_off(receiver: Receiver) -> None:
    receiver.script = [(410, {}, 0.0)]
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps)

    async def body() -> None:
        target.submit({"type": "alert.firing"})
        await settle(lambda: not target.enabled)
        target.submit({"type": "alert.resolved"})
        await asyncio.sleep(0.05)

    await run(target, body)
    assert len(receiver.received) == 1


async def test_unreachable_receiver_gives_up_after_max_attempts() -> None:
    metrics, sleeps = Metrics(), Sleeps()
    target = sender("http://127.0.0.1:9/hook", metrics, sleeps, max_attempts=4)

    async def body() -> None:
        target.submit({"type": "alert.firing"})
        await settle(lambda: deliveries(metrics, "failed") == 1)

    await run(target, body)
    assert deliveries(metrics, "retried") == 3
    assert len(sleeps.delays) == 3


async def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    # A second to answer: the prompt second answer cannot run out of it on a slow machine, as
    # it could of 200 ms (a stalled loop fires the timeout with the answer already there).
    receiver.script = [(200, {}, 2.0), (200, {}, 0.0)]
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps, timeout="1s")

    async def body() -> None:
        target.submit({"type": "alert.firing"})
        await settle(lambda: deliveries(metrics, "delivered") == 1)

    await run(target, body)
    assert deliveries(metrics, "retried") == 1


async def test_full_queue_drops_the_oldest() -> None:
    metrics, sleeps = Metrics(), Sleeps()
    target = sender("http://127.0.0.1:9/hook", metrics, sleeps, queue_size=2)
    for index in range(5):
        target.submit({"n": index})
    assert target.pending == 2
    assert deliveries(metrics, "dropped") == 3
    await target.close()


async def test_backoff_jitter_stays_between_half_and_all_of_the_delay() -> None:
    settings = AlertWebhookConfig(url="http://h/x", secret=VECTOR_SECRET, backoff=2, max_backoff=10)
    low = WebhookSender(settings, Metrics(), jitter=lambda: 0.0)
    high = WebhookSender(settings, Metrics(), jitter=lambda: 1.0)
    assert [low._delay(n, None) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert [high._delay(n, None) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


# -- alerts end to end: engine → queue → receiver --------------------------------------------


async def test_alert_fires_and_resolves_to_the_receiver(receiver: Receiver) -> None:
    now = [5_000.0]
    config = AlertsConfig(
        enabled=True,
        rules=[
            AlertRuleConfig(
                name="brute-force",
                kind="auth_failures",
                threshold=2,
                per="ip",
                window=60,
                resolve_after=0,
                severity="critical",
            )
        ],
        webhook=AlertWebhookConfig(url=receiver.url, secret=VECTOR_SECRET),
    )
    alerts = AlertEngine(config, Metrics(), clock=lambda: now[0])
    await alerts.start()
    try:
        sink = alerts.audit_sink(_NullSink())
        for _ in range(3):
            await sink.emit(AuditEvent(kind="auth.login.failed", client_ip="203.0.113.9"))
        assert len(alerts.evaluate()) == 1
        now[0] += 61
        assert len(alerts.evaluate()) == 1
        await receiver.wait_for(2)
    finally:
        await alerts.close()
    firing, resolved = receiver.verified()
    assert firing["type"] == "alert.firing"
    assert resolved["type"] == "alert.resolved"
    assert firing["data"]["id"] == resolved["data"]["id"]
    assert firing["data"] | {"value": None} == {
        "id": firing["data"]["id"],
        "rule": "brute-force",
        "kind": "auth_failures",
        "severity": "critical",
        "per": "ip",
        "client_ip": "203.0.113.9",
        "value": None,
        "threshold": 2.0,
        "unit": "events",
        "window_seconds": 60.0,
        "started_at": firing["data"]["started_at"],
        "instance": firing["data"]["instance"],
    }
    assert firing["data"]["value"] == 3
    assert resolved["data"]["value"] == 0
    assert "resolved_at" in resolved["data"]


class _NullSink:
    async def emit(self, event: AuditEvent) -> None:
        return None


RETRY_AFTER = [
    ("seconds", "7", 7.0),
    ("padded", " 12 ", 12.0),
    ("zero", "0", 0.0),
    ("date-ahead", "Tue, 01 Dec 2026 23:00:30 GMT", 30.0),
    ("date-past", "Tue, 01 Dec 2026 22:00:00 GMT", 0.0),
    ("negative", "-5", None),
    ("fraction", "1.5", None),
    ("garbage", "soon", None),
    ("arabic-indic-digits", "\u0661\u0662", None),
    ("superscript-digit", "\u00b2", None),
    ("too-many-digits", "9" * 40, None),
    ("date-minus-zero", "Tue, 01 Dec 2026 23:00:30 -0000", 30.0),
    ("date-year-out-of-range", "Tue, 01 Dec 99999 23:00:30 GMT", None),
    ("empty", "", None),
    ("absent", None, None),
]


@pytest.mark.parametrize(
    ("case", "header", "seconds"), RETRY_AFTER, ids=[r[0] for r in RETRY_AFTER]
)
def test_retry_after_parsing(case: str, header: str | None, seconds: float | None) -> None:
    now = 1796166000.0  # Tue, 01 Dec 2026 23:00:00 GMT
    assert _retry_after(header, now) == seconds


async def test_close_lets_queued_alerts_go_out(receiver: Receiver) -> None:
    metrics, sleeps = Metrics(), Sleeps()
    target = sender(receiver.url, metrics, sleeps)
    await target.start()
    for index in range(3):
        target.submit({"type": "alert.firing", "n": index})
    await target.close()
    assert [body["n"] for body in receiver.verified()] == [0, 1, 2]
    assert deliveries(metrics, "delivered") == 3


async def test_alerts_still_queued_at_close_are_counted_as_dropped() -> None:
    metrics, sleeps = Metrics(), Sleeps()
    target = sender("http://127.0.0.1:9/hook", metrics, sleeps)
    target.submit({"type": "alert.firing"})
    target.submit({"type": "alert.resolved"})
    await target.close()
    assert target.pending == 0
    assert deliveries(metrics, "dropped") == 2

"""The gate and ratelimit stages: refusals, bans, shadow mode, concurrency slots, store failures
and the tarpit, each through the real request-id, error and client-IP stages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import http_sfv
import httpx
import pytest
from structlog.testing import capture_logs

from bastion.audit.events import MemoryAuditSink
from bastion.deps import Deps
from bastion.engine import Bastion
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.inspect.config import InspectConfig, StrikesConfig
from bastion.pipeline.client_ip import ClientIpStage
from bastion.pipeline.config import ClientIpConfig
from bastion.ratelimit.config import BansConfig, PolicyConfig, RateLimitConfig, TarpitConfig
from bastion.ratelimit.core import (
    BanRecord,
    BanRule,
    Check,
    Decision,
    RateLimitStore,
    RateLimitStoreError,
    Verdict,
)
from bastion.ratelimit.limiter import Limiter
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.policies import PolicySet
from bastion.ratelimit.stage import GateStage, RateLimitStage
from bastion.settings import Settings
from bastion.store.config import StoreConfig
from problem_assertions import assert_problem
from ratelimit.stage_helpers import FakeAuth, ok
from stage_harness import around, make_deps

CLIENT = "203.0.113.7"
NO_BANS = BansConfig(enabled=False)


class CountingStore:
    """A store that counts calls and can be made to fail; otherwise a :class:`MemoryStore`."""

    def __init__(self, inner: RateLimitStore | None = None) -> None:
        # Time stands still for the store: a request a test expects refused is not let through
        # because a slow run crossed into the next minute's window.
        now = time.time()
        self.inner = inner if inner is not None else MemoryStore(clock=lambda: now)
        self.failing = False
        self.evaluations = 0
        self.releases = 0

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        self.evaluations += 1
        if self.failing:
            raise RateLimitStoreError("connection refused")
        return await self.inner.evaluate(checks, client=client, bans=bans)

    async def release(self, checks: Sequence[Check]) -> None:
        self.releases += 1
        await self.inner.release(checks)

    async def active_bans(self) -> list[BanRecord]:
        return await self.inner.active_bans()

    async def lift(self, client: str) -> bool:
        return await self.inner.lift(client)

    async def close(self) -> None:
        await self.inner.close()


class ScriptedStore(CountingStore):
    """Answers each evaluation with the next verdict of a script (the last one repeats)."""

    def __init__(self, *verdicts: Verdict) -> None:
        super().__init__()
        self.script = list(verdicts)

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        self.evaluations += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class Harness:
    """Client IP → gate → fake auth → ratelimit stage → ``app``, inside the request-id and
    error stages."""

    def __init__(
        self,
        config: RateLimitConfig,
        app: ASGIApp = ok,
        *,
        store: RateLimitStore | None = None,
        trusted: list[str] | None = None,
        clock: list[float] | None = None,
    ) -> None:
        settings = Settings(
            ratelimit=config, client_ip=ClientIpConfig(trusted_proxies=trusted or [])
        )
        self.deps: Deps = make_deps(settings)
        self.audit = MemoryAuditSink()
        self.deps.audit = self.audit
        self.store = store if store is not None else CountingStore()
        self.now = clock if clock is not None else [0.0]
        self.limiter = Limiter(
            self.store,
            config=config,
            policies=PolicySet(config, prefix=self.deps.prefix),
            metrics=self.deps.metrics,
            audit=self.audit,
            store_name="redis",
            local=MemoryStore,
            clock=lambda: self.now[0],
        )

        def stages(inner: ASGIApp, deps: Deps) -> ASGIApp:
            inner = RateLimitStage(inner, config=config, deps=deps, limiter=self.limiter)
            inner = GateStage(FakeAuth(inner), config=config, deps=deps, limiter=self.limiter)
            if trusted:
                inner = ClientIpStage(inner, config=settings.client_ip, deps=deps)
            return inner

        self.app = around(stages, app, self.deps)

    async def get(
        self, path: str = "/items", *, ip: str = CLIENT, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.deps.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def decisions(self, policy: str, result: str) -> float:
        return self.metric("bastion_ratelimit_decisions_total", policy=policy, result=result)


def sf(value: str) -> list[tuple[Any, dict[str, Any]]]:
    parsed = http_sfv.List()
    parsed.parse(value.encode())
    return [(item.value, dict(item.params)) for item in parsed]  # type: ignore[union-attr]


def fixed(name: str = "global", limit: int = 2, **options: Any) -> PolicyConfig:
    return PolicyConfig(name=name, algorithm="fixed_window", limit=limit, period=60.0, **options)


async def test_over_the_limit_is_a_429_problem_with_retry_after_and_headers() -> None:
    harness = Harness(RateLimitConfig(policies=[fixed()], bans=NO_BANS))
    first = await harness.get()
    assert first.status_code == 200
    assert sf(first.headers["ratelimit-policy"]) == [("global", {"q": 2, "w": 60})]
    assert sf(first.headers["ratelimit"])[0][1]["r"] == 1
    assert (await harness.get()).status_code == 200
    refused = await harness.get()
    body = assert_problem(refused, 429, "rate_limited")
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 60
    assert body["retry_after"] == retry
    assert sf(refused.headers["ratelimit"]) == [("global", {"r": 0, "t": retry})]
    assert harness.decisions("global", "allowed") == 2
    assert harness.decisions("global", "limited") == 1
    assert harness.metric("bastion_ratelimit_store_seconds_count") == 3
    # Another client has its own bucket.
    assert (await harness.get(ip="198.51.100.1")).status_code == 200


async def test_headers_can_be_turned_off() -> None:
    harness = Harness(RateLimitConfig(policies=[fixed()], bans=NO_BANS, headers=False))
    response = await harness.get()
    assert "ratelimit" not in response.headers
    assert "ratelimit-policy" not in response.headers


async def test_legacy_headers_when_configured() -> None:
    harness = Harness(RateLimitConfig(policies=[fixed()], bans=NO_BANS, legacy_headers=True))
    response = await harness.get()
    assert response.headers["x-ratelimit-limit"] == "2"
    assert response.headers["x-ratelimit-remaining"] == "1"


async def test_user_policies_run_after_auth_and_skip_anonymous_requests() -> None:
    config = RateLimitConfig(
        policies=[PolicyConfig(name="users", key="user", algorithm="fixed_window", limit=1)],
        bans=NO_BANS,
    )
    harness = Harness(config)
    alice = {"x-test-user": "u-alice"}
    response = await harness.get(headers=alice)
    assert response.status_code == 200
    # Both stages' policies are reported; the user one is the most restrictive.
    assert [name for name, _ in sf(response.headers["ratelimit-policy"])] == ["global", "users"]
    [(name, params)] = sf(response.headers["ratelimit"])
    assert (name, params["r"]) == ("users", 0)
    assert 1 <= params["t"] <= 60
    assert harness.store.evaluations == 2  # type: ignore[attr-defined]  # one per stage
    assert_problem(await harness.get(headers=alice), 429, "rate_limited")
    assert (await harness.get(headers={"x-test-user": "u-bob"})).status_code == 200
    for _ in range(3):
        assert (await harness.get()).status_code == 200  # anonymous: the user policy is moot


async def test_repeated_refusals_ban_the_client_and_are_audited() -> None:
    bans = BansConfig(threshold=2, window=60.0, durations=[120.0])
    harness = Harness(RateLimitConfig(policies=[fixed(limit=1)], bans=bans))
    assert (await harness.get()).status_code == 200
    assert_problem(await harness.get(), 429, "rate_limited")
    banned = await harness.get()
    body = assert_problem(banned, 429, "client_banned")
    assert banned.headers["retry-after"] == "120"
    assert body["retry_after"] == 120
    again = await harness.get()
    assert_problem(again, 429, "client_banned")
    assert 1 <= int(again.headers["retry-after"]) <= 120
    [event] = harness.audit.events
    assert event.kind == "ratelimit.banned"
    assert event.target == CLIENT
    assert event.client_ip == CLIENT
    assert event.detail == {"duration": 120.0, "level": 1}
    assert harness.decisions("_bans", "limited") == 2
    assert (await harness.get(ip="198.51.100.1")).status_code == 200


async def test_shadow_policies_never_refuse_but_are_counted() -> None:
    harness = Harness(RateLimitConfig(policies=[fixed(limit=1, mode="shadow")], bans=NO_BANS))
    for _ in range(4):
        response = await harness.get()
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    assert harness.decisions("global", "allowed") == 1
    assert harness.decisions("global", "shadow_limited") == 3


class Blocking:
    """``/hold`` answers, then keeps running until released (like a background task);
    ``/boom`` raises; ``/leave`` waits for the client to disconnect, then until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.answered = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("boom")
        if path == "/leave":
            while (await receive())["type"] != "http.disconnect":
                pass
            self.answered.set()
            await self.release.wait()
            return
        await ok(scope, receive, send)
        if path == "/hold":
            self.answered.set()
            await self.release.wait()


def http_scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": (CLIENT, 50000),
        "server": ("test", 80),
        "state": {},
    }


async def exchange(app: ASGIApp, path: str, *, disconnect: bool = False) -> list[Message]:
    sent: list[Message] = []
    first = True

    async def receive() -> Message:
        nonlocal first
        if first and not disconnect:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(path), receive, send)
    return sent


@pytest.mark.parametrize("path", ["/hold", "/boom", "/leave"])
async def test_concurrency_slots_come_back_exactly_once(path: str) -> None:
    app = Blocking()
    config = RateLimitConfig(
        policies=[PolicyConfig(name="global", algorithm="concurrency", limit=1, period=60.0)],
        bans=NO_BANS,
    )
    harness = Harness(config, app)
    store: CountingStore = harness.store  # type: ignore[assignment]
    first = asyncio.create_task(exchange(harness.app, path, disconnect=path == "/leave"))
    if path == "/boom":
        assert (await first)[0]["status"] == 500
    else:
        await asyncio.wait_for(app.answered.wait(), 5)
        await asyncio.sleep(0)
    # The slot is free although the first request's app is still running.
    assert store.releases == 1
    second = await exchange(harness.app, "/ok")
    assert second[0]["status"] == 200
    app.release.set()
    await first
    assert store.releases == 2


async def test_concurrency_refuses_while_the_slot_is_held() -> None:
    app = Blocking()
    config = RateLimitConfig(
        policies=[PolicyConfig(name="global", algorithm="concurrency", limit=1, period=60.0)],
        bans=NO_BANS,
    )
    harness = Harness(config, app)

    async def hold_request() -> list[Message]:
        # A response that has started but not ended keeps its slot.
        sent: list[Message] = []

        async def receive() -> Message:
            await app.release.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.start":
                await app.release.wait()

        await harness.app(http_scope("/ok"), receive, send)
        return sent

    task = asyncio.create_task(hold_request())
    await asyncio.sleep(0.01)
    refused = await harness.get("/ok")
    assert_problem(refused, 429, "rate_limited")
    assert sf(refused.headers["ratelimit-policy"]) == [
        ("global", {"q": 1, "qu": "concurrent-requests"})
    ]
    app.release.set()
    await task
    assert (await harness.get("/ok")).status_code == 200


@pytest.mark.parametrize(
    ("mode", "statuses"),
    [("open", [200, 200, 200]), ("closed", [503, 503, 503]), ("local", [200, 429, 429])],
)
async def test_store_failure_follows_on_store_error(mode: str, statuses: list[int]) -> None:
    config = RateLimitConfig(policies=[fixed(limit=1, on_store_error=mode)], bans=NO_BANS)
    harness = Harness(config)
    harness.store.failing = True  # type: ignore[attr-defined]
    responses = [await harness.get() for _ in range(3)]
    assert [r.status_code for r in responses] == statuses
    if mode == "closed":
        assert_problem(responses[0], 503, "ratelimit_unavailable")
    if mode == "local":
        assert_problem(responses[1], 429, "rate_limited")
        assert "ratelimit" in responses[0].headers
    assert harness.decisions("global", "store_error") == 3
    # The store is tried once; for the next second it is left alone.
    assert harness.metric("bastion_store_errors_total", store="redis", op="ratelimit") == 1


async def test_store_failures_are_logged_once_per_interval_and_recovery_is_automatic() -> None:
    config = RateLimitConfig(policies=[fixed(limit=100)], bans=NO_BANS, error_log_interval=60.0)
    harness = Harness(config)
    store: CountingStore = harness.store  # type: ignore[assignment]
    store.failing = True
    with capture_logs() as logs:
        for second in (0.0, 0.5, 2.0, 4.0, 61.0):
            harness.now[0] = second
            assert (await harness.get()).status_code == 200
        errors = [entry for entry in logs if entry["log_level"] == "error"]
        assert len(errors) == 2
        assert store.evaluations == 4  # not at 0.5 s: inside the back-off after a failure
        store.failing = False
        harness.now[0] = 63.0
        response = await harness.get()
        assert "ratelimit" in response.headers
        assert store.evaluations == 5
        assert any(entry["event"] == "rate-limit store recovered" for entry in logs)
    assert harness.metric("bastion_store_errors_total", store="redis", op="ratelimit") == 4


def refused(wait: float) -> Verdict:
    return Verdict(False, (Decision(False, 1, 0, wait, wait),))


ALLOWED = Verdict(True, (Decision(True, 1, 0, 1.0, 0.0),))


def tarpit(**options: Any) -> RateLimitConfig:
    return RateLimitConfig(
        policies=[fixed(limit=1)], bans=NO_BANS, tarpit=TarpitConfig(enabled=True, **options)
    )


@pytest.mark.parametrize(
    ("id_", "script", "status", "evaluations"),
    [
        ("held-then-allowed", (refused(0.02), ALLOWED), 200, 2),
        ("held-once-only", (refused(0.02),), 429, 2),
        ("too-long-to-hold", (refused(5.0),), 429, 1),
    ],
)
async def test_tarpit_holds_a_short_refusal_once(
    id_: str, script: tuple[Verdict, ...], status: int, evaluations: int
) -> None:
    store = ScriptedStore(*script)
    harness = Harness(tarpit(max_delay=1.0), store=store)
    assert (await harness.get()).status_code == status
    assert store.evaluations == evaluations
    assert harness.limiter.waiting == 0


async def test_tarpit_holds_a_bounded_number_of_requests() -> None:
    store = ScriptedStore(refused(0.05))
    harness = Harness(tarpit(max_delay=1.0, max_waiting=1), store=store)
    responses = await asyncio.gather(harness.get(), harness.get())
    assert [r.status_code for r in responses] == [429, 429]
    assert store.evaluations == 3  # one request held and decided again, the other refused at once


async def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_move_the_bucket() -> None:
    config = RateLimitConfig(policies=[fixed(limit=1)], bans=NO_BANS)
    harness = Harness(config, trusted=["10.0.0.0/8"])
    first = await harness.get(headers={"x-forwarded-for": "198.51.100.1"})
    assert first.status_code == 200
    spoofed = await harness.get(headers={"x-forwarded-for": "198.51.100.2"})
    assert_problem(spoofed, 429, "rate_limited")
    # Through a trusted proxy the forwarded client is the one counted.
    proxy = "10.0.0.1"
    for client in ("198.51.100.1", "198.51.100.2"):
        response = await harness.get(ip=proxy, headers={"x-forwarded-for": client})
        assert response.status_code == 200


def chain(settings: Settings) -> list[str]:
    async def terminal(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    names = []
    node: Any = Bastion(settings).wrap(terminal).pipeline
    while node is not terminal:
        names.append(type(node).__name__)
        node = node.app
    return names


LATE_ONLY = [PolicyConfig(name="global", key="user", limit=5)]
NO_STRIKES = InspectConfig(strikes=StrikesConfig(enabled=False))


@pytest.mark.parametrize(
    ("id_", "config", "inspect", "present"),
    [
        ("default", RateLimitConfig(), InspectConfig(), {"GateStage"}),
        ("disabled", RateLimitConfig(enabled=False), NO_STRIKES, set()),
        (
            "disabled-with-strikes",
            RateLimitConfig(enabled=False),
            InspectConfig(),
            {"StrikeGate"},
        ),
        (
            "late-only",
            RateLimitConfig(policies=LATE_ONLY, bans=NO_BANS),
            NO_STRIKES,
            {"RateLimitStage"},
        ),
        (
            "strikes-only",
            RateLimitConfig(policies=LATE_ONLY, bans=NO_BANS),
            InspectConfig(),
            {"GateStage", "RateLimitStage"},
        ),
        (
            "bans-only",
            RateLimitConfig(policies=LATE_ONLY),
            NO_STRIKES,
            {"GateStage", "RateLimitStage"},
        ),
        (
            "inspection-off",
            RateLimitConfig(policies=LATE_ONLY, bans=NO_BANS),
            InspectConfig(mode="off"),
            {"RateLimitStage"},
        ),
    ],
)
def test_stages_are_in_the_chain_only_when_needed(
    id_: str, config: RateLimitConfig, inspect: InspectConfig, present: set[str], tmp_path: Any
) -> None:
    """The gate is there for policies, bans or strike blocks; the strike gate only in place of
    an absent rate-limit gate."""
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    names = chain(Settings(store=store, ratelimit=config, inspect=inspect))
    assert {"GateStage", "RateLimitStage", "StrikeGate"} & set(names) == present


@pytest.mark.redis
async def test_with_redis_and_with_redis_unreachable(clean_redis_url: str) -> None:
    from bastion.ratelimit.redis_store import RedisStore
    from bastion.store.redis import RedisConnector

    config = RateLimitConfig(policies=[fixed(limit=1)], bans=NO_BANS)
    connector = RedisConnector.from_url(clean_redis_url, timeout=1.0)
    store = RedisStore(connector, prefix="test:rl:")
    try:
        harness = Harness(config, store=store)
        assert (await harness.get()).status_code == 200
        assert_problem(await harness.get(), 429, "rate_limited")
    finally:
        await store.close()
        await connector.close()
    # Nothing listens on port 1: every decision fails and the policy counts locally.
    dead = RedisConnector.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    store = RedisStore(dead, prefix="test:rl:")
    try:
        harness = Harness(config, store=store)
        assert (await harness.get()).status_code == 200
        assert_problem(await harness.get(), 429, "rate_limited")
        assert harness.metric("bastion_store_errors_total", store="redis", op="ratelimit") == 1
    finally:
        await store.close()
        await dead.close()


async def test_every_spelling_of_a_limited_path_counts_in_the_same_bucket() -> None:
    login = PolicyConfig(
        name="login-ip",
        algorithm="fixed_window",
        limit=2,
        period=3600.0,
        match={"paths": ["/api/login"], "methods": ["POST"]},  # type: ignore[arg-type]
    )
    harness = Harness(RateLimitConfig(policies=[login], bans=NO_BANS))
    transport = httpx.ASGITransport(app=harness.app, client=(CLIENT, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert [(await client.post("/api/login")).status_code for _ in range(3)] == [200, 200, 429]
        for spelling in ("/api/login/", "/API/login", "/api/LOGIN//", "/api%5Clogin"):
            refused = await client.post(spelling)
            assert_problem(refused, 429, "rate_limited")
            assert sf(refused.headers["ratelimit"])[0][0] == "login-ip"
        assert (await client.get("/api/login")).status_code == 200  # GET is not limited


async def test_mixed_on_store_error_reports_the_policies_actually_decided() -> None:
    config = RateLimitConfig(
        policies=[
            PolicyConfig(name="global", limit=1000, on_store_error="open"),
            PolicyConfig(
                name="tight",
                algorithm="fixed_window",
                limit=2,
                period=3600.0,
                on_store_error="local",
            ),
        ],
        bans=NO_BANS,
    )
    harness = Harness(config)
    harness.store.failing = True  # type: ignore[attr-defined]
    allowed = [await harness.get() for _ in range(2)]
    for response in allowed:
        assert response.status_code == 200
        assert [name for name, _ in sf(response.headers["ratelimit-policy"])] == ["tight"]
    refused = await harness.get()
    assert_problem(refused, 429, "rate_limited")
    assert sf(refused.headers["ratelimit"])[0][0] == "tight"
    assert [name for name, _ in sf(refused.headers["ratelimit-policy"])] == ["tight"]
    assert harness.decisions("tight", "limited") == 1
    assert harness.decisions("tight", "allowed") == 2
    assert harness.decisions("global", "limited") == 0
    assert harness.decisions("global", "allowed") == 0
    assert harness.decisions("global", "store_error") == 3
    assert harness.decisions("tight", "store_error") == 3


class RecordingStore(CountingStore):
    """Records the checks given back and the ``bans`` of every evaluation."""

    def __init__(self, *verdicts: Verdict) -> None:
        super().__init__()
        self.script = list(verdicts)
        self.released: list[Check] = []
        self.bans: list[BanRule | None] = []

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        self.bans.append(bans)
        if self.script:
            self.evaluations += 1
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return await super().evaluate(checks, client=client, bans=bans)

    async def release(self, checks: Sequence[Check]) -> None:
        self.released.extend(checks)
        await super().release(checks)


async def test_refused_shadow_concurrency_slots_are_not_given_back() -> None:
    app = Blocking()
    config = RateLimitConfig(
        policies=[
            PolicyConfig(
                name="global", algorithm="concurrency", limit=1, period=60.0, mode="shadow"
            )
        ],
        bans=NO_BANS,
    )
    store = RecordingStore()
    harness = Harness(config, app, store=store)

    async def hold_request() -> None:
        # A response that has started but not ended keeps its slot.
        async def receive() -> Message:
            await app.release.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await app.release.wait()

        await harness.app(http_scope("/ok"), receive, send)

    first = asyncio.create_task(hold_request())
    await asyncio.sleep(0.01)
    # The first request holds the only slot; the second is over the shadow limit and passes.
    assert (await harness.get("/ok")).status_code == 200
    assert harness.decisions("global", "shadow_limited") == 1
    # Its refused check took no slot, so it gives none back (it would free the first's).
    assert store.released == []
    app.release.set()
    await first
    [released] = store.released
    assert released.lease
    assert harness.decisions("global", "allowed") == 1


async def test_concurrency_leases_are_unique_per_request() -> None:
    app = Blocking()
    config = RateLimitConfig(
        policies=[PolicyConfig(name="global", algorithm="concurrency", limit=5, period=60.0)],
        bans=NO_BANS,
    )
    store = RecordingStore()
    harness = Harness(config, app, store=store)
    for _ in range(2):
        # The client chooses the request id: it cannot make two requests share a lease.
        response = await harness.get("/ok", headers={"x-request-id": "same-id"})
        assert response.status_code == 200
    leases = [check.lease for check in store.released]
    assert len(leases) == 2
    assert len(set(leases)) == 2
    assert all(lease.startswith("same-id.") for lease in leases)


async def test_a_tarpit_retry_does_not_count_toward_bans_again() -> None:
    store = RecordingStore(refused(0.02))
    bans = BansConfig(threshold=5, window=60.0, durations=[60.0])
    config = RateLimitConfig(
        policies=[fixed(limit=1)], bans=bans, tarpit=TarpitConfig(enabled=True, max_delay=1.0)
    )
    harness = Harness(config, store=store)
    assert_problem(await harness.get(), 429, "rate_limited")
    assert len(store.bans) == 2
    assert store.bans[0] is not None
    assert store.bans[1] is None


async def test_store_latency_includes_failures() -> None:
    config = RateLimitConfig(policies=[fixed(limit=100)], bans=NO_BANS)
    harness = Harness(config)
    harness.store.failing = True  # type: ignore[attr-defined]
    for second in (0.0, 2.0, 4.0):
        harness.now[0] = second
        assert (await harness.get()).status_code == 200
    assert harness.metric("bastion_ratelimit_store_seconds_count") == 3
    harness.store.failing = False  # type: ignore[attr-defined]
    harness.now[0] = 6.0
    assert (await harness.get()).status_code == 200
    assert harness.metric("bastion_ratelimit_store_seconds_count") == 4

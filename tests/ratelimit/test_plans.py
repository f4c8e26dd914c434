"""The stages' path with the memory store: plans made once per request shape and client
address, GCRA batches decided exactly as :meth:`MemoryStore.evaluate_now` decides, headers
encoded from the plan as the general renderer encodes them, and decisions counted per plan."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp
from bastion.http.state import RequestState
from bastion.ratelimit.config import BansConfig, PolicyConfig, RateLimitConfig
from bastion.ratelimit.core import BanRule, Check, Decision, Penalty, Rule, Verdict
from bastion.ratelimit.headers import HeaderRenderer, RateLimitReport
from bastion.ratelimit.limiter import Limiter
from bastion.ratelimit.memory import GcraBatch, MemoryStore
from bastion.ratelimit.policies import PolicySet, RequestPlan
from bastion.ratelimit.stage import GateStage, RateLimitStage
from bastion.settings import Settings
from ratelimit.stage_helpers import FakeAuth, ok
from stage_harness import around, make_deps

START = 1_700_000_000.0
BANS = BanRule(threshold=3, window=60.0, durations=(10.0, 20.0), reset_after=300.0)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Ledger:
    """The in-process mirror of a ban ledger: penalties by client."""

    def __init__(self) -> None:
        self.records: dict[str, Penalty] = {}

    def penalty(self, client: str) -> Penalty:
        return self.records.get(client, Penalty(0.0, 0, "ratelimit"))

    def record(self, client: str, *, until: float, level: int, source: str = "ratelimit") -> None:
        self.records[client] = Penalty(until, level, source)


def gcra(policy: str, limit: int, period: float = 6.0, burst: int | None = None) -> Rule:
    return Rule(policy, "gcra", limit, period, burst if burst is not None else limit)


# -- GCRA batches ------------------------------------------------------------------------------

# Each step: seconds to advance, then what to do: "request" (the batch's checks), "retune"
# (the same policies with other limits, as a reload would make, then back), "close".
SCENARIOS: list[tuple[str, list[tuple[Rule, int, bool]], list[tuple[float, str]], bool]] = [
    (
        "enforced checks reach the limit, refusals start a ban",
        [(gcra("a", 3), 1, True), (gcra("b", 100), 1, True), (gcra("c", 5, burst=2), 1, True)],
        [(0.0, "request")] * 9 + [(5.0, "request"), (11.0, "request"), (0.1, "request")],
        False,
    ),
    (
        "a refused shadow check lets the request through",
        [(gcra("a", 100), 1, True), (gcra("s", 2), 1, False)],
        [(0.0, "request")] * 5 + [(3.1, "request"), (0.0, "request")],
        False,
    ),
    (
        "costs above one",
        [(gcra("a", 10), 3, True), (gcra("b", 10, burst=4), 2, True)],
        [(0.0, "request")] * 4 + [(1.2, "request"), (0.6, "request"), (0.0, "request")],
        False,
    ),
    (
        "a retuned policy recompiles the batch",
        [(gcra("a", 4), 1, True), (gcra("b", 50), 1, True)],
        [(0.0, "request")] * 3 + [(0.0, "retune"), (0.0, "request"), (0.5, "request")],
        False,
    ),
    (
        "a closed store starts afresh",
        [(gcra("a", 2), 1, True), (gcra("b", 2), 1, True)],
        [(0.0, "request")] * 3 + [(0.0, "close"), (0.0, "request"), (0.0, "request")],
        False,
    ),
    (
        "bans through a ledger",
        [(gcra("a", 2), 1, True), (gcra("b", 100), 1, True)],
        [(0.0, "request")] * 6 + [(9.0, "request"), (1.5, "request"), (0.0, "request")],
        True,
    ),
]


@pytest.mark.parametrize(
    ("checks", "steps", "ledger"),
    [pytest.param(c, s, led, id=name) for name, c, s, led in SCENARIOS],
)
async def test_a_batch_decides_as_evaluate_now(
    checks: list[tuple[Rule, int, bool]], steps: list[tuple[float, str]], ledger: bool
) -> None:
    clock = Clock()
    general = MemoryStore(clock=clock, ledger=Ledger() if ledger else None)
    batched = MemoryStore(clock=clock, ledger=Ledger() if ledger else None)
    made = [Check(rule, f"{rule.policy}|ip:x", cost, enforce) for rule, cost, enforce in checks]
    batch = GcraBatch(tuple(made))
    retuned = [Check(gcra(c.rule.policy, c.rule.limit * 2), c.key, c.cost, c.enforce) for c in made]
    outcomes: list[Verdict] = []
    for advance, action in steps:
        clock.now += advance
        if action == "close":
            await general.close()
            await batched.close()
            continue
        if action == "retune":
            assert general.evaluate_now(retuned, client="x", bans=BANS) == (
                batched.evaluate_now(retuned, client="x", bans=BANS)
            )
            continue
        expected = general.evaluate_now(made, client="x", bans=BANS)
        assert batched.evaluate_batch(batch, "x", BANS) == expected
        assert len(batched) == len(general)
        outcomes.append(expected)
    # The scenarios get where they claim to.
    assert any(v.allowed for v in outcomes)
    if all(enforce for _, _, enforce in checks) and checks[0][0].limit < 5:
        assert any(not v.allowed for v in outcomes)


def test_a_batch_holds_gcra_checks_only() -> None:
    store = MemoryStore()
    batch = GcraBatch((Check(Rule("w", "fixed_window", 5, 60.0, 5), "w|ip:x"),))
    with pytest.raises(ValueError, match="GCRA checks only"):
        store.evaluate_batch(batch)


async def test_a_batch_follows_the_store_it_is_used_with() -> None:
    clock = Clock()
    first, second = MemoryStore(clock=clock), MemoryStore(clock=clock)
    batch = GcraBatch((Check(gcra("a", 2), "a|ip:x"),))
    assert first.evaluate_batch(batch).decisions[0].remaining == 1
    # Another store's buckets: its own count, not the first store's.
    assert second.evaluate_batch(batch).decisions[0].remaining == 1
    assert first.evaluate_batch(batch).decisions[0].remaining == 0
    assert not first.evaluate_batch(batch).allowed


# -- headers from a plan -----------------------------------------------------------------------


def d(remaining: int, reset: float, allowed: bool = True, limit: int = 10) -> Decision:
    return Decision(allowed, limit, remaining, reset, 0.0 if allowed else reset)


HEADER_CASES: list[tuple[str, list[bool], list[Decision]]] = [
    ("lowest remaining wins", [True, True, True], [d(9, 1.0), d(3, 2.0), d(7, 9.0)]),
    ("equal remaining: longer wait", [True, True, True], [d(3, 1.0), d(3, 4.2), d(3, 4.1)]),
    ("equal remaining and wait: first", [True, True], [d(3, 2.0), d(3, 2.0)]),
    ("shadow checks are never reported", [False, True, False], [d(0, 9.0), d(5, 1.0), d(1, 1.0)]),
    ("only shadow checks: no headers", [False, False], [d(0, 9.0, False), d(1, 1.0)]),
    ("negative figures are clamped", [True, True], [d(-2, -1.0), d(4, 0.2)]),
    ("fractions round up", [True], [d(2, 0.0001)]),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["ietf", "legacy"])
@pytest.mark.parametrize(
    ("enforce", "decisions"), [pytest.param(e, ds, id=name) for name, e, ds in HEADER_CASES]
)
def test_a_plan_renders_as_the_general_renderer(
    enforce: list[bool], decisions: list[Decision], legacy: bool
) -> None:
    names = ["global", "api", "reads"][: len(enforce)]
    config = RateLimitConfig(
        policies=[
            PolicyConfig(name=name, limit=10 * (index + 1), period=60.0)
            for index, name in enumerate(names)
        ]
    )
    policies = PolicySet(config, prefix="/_bastion")
    checks = tuple(
        Check(policies.by_name[name].rule, f"{name}|ip:x", 1, on)
        for name, on in zip(names, enforce, strict=True)
    )
    plan = RequestPlan("x", checks)
    renderer = HeaderRenderer(policies, legacy=legacy)
    planned, general = RateLimitReport(), RateLimitReport()
    planned.plan = plan
    planned.add(checks, decisions)
    general.add(checks, decisions)
    expected = renderer.render(general)
    assert bool(expected) == any(enforce)
    for _ in range(2):  # the encoding is kept on the plan after the first response
        assert renderer.render(planned) == expected
        assert plan.rendering is not None


def test_a_plan_is_made_once_per_request_shape_and_client() -> None:
    config = RateLimitConfig(
        policies=[
            PolicyConfig(name="api", limit=10, period=60.0, match={"paths": ["/api/*"]}),
            PolicyConfig(name="users", limit=10, period=60.0, key="user"),
        ]
    )
    policies = PolicySet(config, prefix="/_bastion")
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/api/x", "headers": []}
    state = _state("10.0.0.1")
    plan = policies.plan_for(scope, state, "gate")
    assert policies.plan_for(scope, _state("10.0.0.1"), "gate") is plan
    assert plan.static
    assert plan.batch is not None
    assert sorted(c.rule.policy for c in plan.checks) == ["api", "global"]
    assert [labels[0] for labels in plan.labels] == [
        (c.rule.policy, "allowed") for c in plan.checks
    ]
    assert policies.plan_for(scope, _state("10.0.0.2"), "gate") is not plan
    late = policies.plan_for(scope, state, "late")
    assert not late.static
    assert late.checks == ()
    assert late.batch is None


def _state(ip: str) -> RequestState:
    return RequestState("r" * 32, 0.0, ip, "http")


# -- through the stages ------------------------------------------------------------------------


class AsyncMemory:
    """The memory store seen through the store protocol only: the stages take their general,
    awaited path with it."""

    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryStore(clock=clock)

    async def evaluate(
        self,
        checks: Any,
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        return self.inner.evaluate_now(checks, client=client, bans=bans)

    async def release(self, checks: Any) -> None:
        self.inner.release_now(checks)

    async def active_bans(self) -> Any:
        return await self.inner.active_bans()

    async def lift(self, client: str) -> bool:
        return await self.inner.lift(client)

    async def close(self) -> None:
        await self.inner.close()


class Stages:
    def __init__(self, config: RateLimitConfig, store: Any, clock: Clock) -> None:
        self.deps: Deps = make_deps(Settings(ratelimit=config))
        self.limiter = Limiter(
            store,
            config=config,
            policies=PolicySet(config, prefix=self.deps.prefix),
            metrics=self.deps.metrics,
            audit=None,
            store_name="memory",
            clock=clock,
        )

        def stages(inner: ASGIApp, deps: Deps) -> ASGIApp:
            inner = RateLimitStage(inner, config=config, deps=deps, limiter=self.limiter)
            return GateStage(FakeAuth(inner), config=config, deps=deps, limiter=self.limiter)

        self.app = around(stages, ok, self.deps)

    async def get(self, path: str, ip: str, user: str | None) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 50000))
        headers = {"x-test-user": user} if user else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    def decisions(self) -> dict[tuple[str, str], float]:
        found: dict[tuple[str, str], float] = {}
        for family in self.deps.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "bastion_ratelimit_decisions_total":
                    found[(sample.labels["policy"], sample.labels["result"])] = sample.value
        return found


REPORTED = ("ratelimit-policy", "ratelimit", "retry-after", "x-ratelimit-remaining")


@pytest.mark.parametrize("legacy", [False, True], ids=["ietf", "legacy"])
async def test_the_memory_path_answers_as_the_general_path(legacy: bool) -> None:
    """Same requests, same clock: the synchronous plan path and the awaited general path give
    the same statuses, headers and decision counts (gate-only requests, requests that also
    meet a per-user policy, shadow refusals, refusals and the ban that follows)."""
    config = RateLimitConfig(
        legacy_headers=legacy,
        bans=BansConfig(threshold=3, window=60.0, durations=[30.0], reset_after=300.0),
        policies=[
            PolicyConfig(name="global", limit=6, period=60.0),
            PolicyConfig(name="api", limit=4, period=60.0, match={"paths": ["/api/*"]}),
            PolicyConfig(name="peek", limit=1, period=60.0, mode="shadow"),
            PolicyConfig(name="users", limit=2, period=60.0, key="user"),
        ],
    )
    clock = Clock()
    fast = Stages(config, MemoryStore(clock=clock), clock)
    general = Stages(config, AsyncMemory(clock), clock)
    assert fast.limiter.synchronous
    assert not general.limiter.synchronous
    requests = [
        ("/api/a", "203.0.113.7", None),
        ("/api/a", "203.0.113.7", "ann"),
        ("/other", "203.0.113.7", None),
        ("/api/a", "203.0.113.7", "ann"),
        ("/api/a", "203.0.113.7", "ann"),
        ("/api/b", "203.0.113.7", None),
        ("/api/b", "203.0.113.7", None),
        ("/api/b", "203.0.113.7", None),
        ("/api/b", "203.0.113.7", None),
        ("/other", "198.51.100.1", None),
    ]
    statuses: list[int] = []
    for path, ip, user in requests:
        clock.now += 0.5
        one, two = await fast.get(path, ip, user), await general.get(path, ip, user)
        assert one.status_code == two.status_code
        for name in REPORTED:
            assert one.headers.get(name) == two.headers.get(name), (path, user, name)
        statuses.append(one.status_code)
    assert fast.decisions() == general.decisions()
    assert {200, 429} <= set(statuses)
    assert fast.decisions()[("peek", "shadow_limited")] > 0
    assert fast.decisions()[("_bans", "limited")] > 0


async def test_counts_per_plan_are_all_exported() -> None:
    """Decisions kept per plan between scrapes add up, also past the plans kept waiting."""
    config = RateLimitConfig(
        bans=BansConfig(enabled=False),
        policies=[PolicyConfig(name="global", limit=10_000, period=60.0)],
    )
    clock = Clock()
    stages = Stages(config, MemoryStore(clock=clock), clock)
    clients = [f"10.1.{i // 250}.{i % 250}" for i in range(1100)]
    for ip in clients:
        assert (await stages.get("/x", ip, None)).status_code == 200
    assert stages.decisions() == {("global", "allowed"): 1100.0}
    for _ in range(3):
        await stages.get("/x", clients[0], None)
    assert stages.decisions() == {("global", "allowed"): 1103.0}

"""Rate limiting in process: what a decision and the rate-limit stages cost.

Everything runs in one process and one asyncio event loop, as :mod:`bench.micro` and
:mod:`bench.auth` do (interleaved batches, median batch, every baseline measured in the same run):

1. **Store.** :meth:`MemoryStore.evaluate_now` called in a loop on one existing bucket per
   check, limits high enough that nothing is refused: GCRA with one check and with three (the
   per-policy figure is the call divided by three), the same three with the client's ban state
   (as the gate calls it), and every other algorithm with one check (``concurrency``: the slot
   taken and given back, :meth:`MemoryStore.release_now`). The baseline is the same loop
   calling a function that does nothing.
2. **Pipeline.** ``GET /hello`` through the full pipeline ``Bastion(settings).wrap`` builds
   around :func:`bench.apps.raw_hello` (access log off), with three matching ``ip``-keyed
   enforced GCRA policies (:data:`POLICIES`, limits never reached) and the memory store, against
   the same pipeline with ``ratelimit.enabled = false``; and, to tell the parts apart, the same
   three policies without headers, without bans, and the built-in ``global`` policy alone in
   shadow mode (what the other scenarios configure).
3. **Breakdown.** The pieces of the gate's work for that request, each called alone in a loop
   with the objects of the three-policy pipeline: :meth:`PolicySet.plan_for`, the store call
   the gate makes (:meth:`MemoryStore.evaluate_batch`, with the SQL ban ledger, as wired) beside
   the general :meth:`MemoryStore.evaluate_now` of the same checks, the whole
   :meth:`Limiter.admit_plan`, and :meth:`HeaderRenderer.render` of the plan's decisions.
4. **Redis** (with ``--redis-url``). :meth:`RedisStore.evaluate` of the three checks with bans,
   from many concurrent callers, batched (the default) and unbatched: CPU time of this process
   per call, ``EVALSHA`` commands per call (``RedisStore.commands_sent``), wall time.

``python -m bench.ratelimit [--quick] [--redis-url redis://127.0.0.1:6379/0]`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bastion import Bastion, Settings
from bastion.http.asgi import ASGIApp, Scope
from bastion.http.state import RequestState
from bastion.ratelimit.core import BanRule, Check, Rule
from bastion.ratelimit.headers import RateLimitReport
from bastion.ratelimit.memory import MemoryStore
from bench.apps import PATH, bastion_toml, raw_hello
from bench.micro import (
    MicroCase,
    MicroResult,
    StatusSink,
    access_log_to_devnull,
    pipeline_chain,
    request_scope,
    run_batch,
)

__all__ = [
    "HIGH_LIMIT",
    "PIPELINE_TARGET_US",
    "POLICIES",
    "QUICK",
    "REDIS_COMMANDS_TARGET",
    "REDIS_RATIO_TARGET",
    "RL_OFF",
    "RL_ON",
    "STORE_TARGET_US",
    "RateLimitParams",
    "RateLimitResult",
    "RedisCase",
    "StoreCase",
    "policy_toml",
    "run_ratelimit",
]

STORE_TARGET_US = 1.0
"""Most one decision of one policy may cost in the memory store, in microseconds."""
PIPELINE_TARGET_US = 5.0
"""Most the rate-limit stages may add per request with three policies, in microseconds."""
REDIS_COMMANDS_TARGET = 1.0
"""Most Redis commands an anonymous request may cost (``EVALSHA`` calls per request served)."""
REDIS_RATIO_TARGET = 0.7
"""Least throughput with the Redis store, as a share of the same pipeline without rate limiting."""
HIGH_LIMIT = 10_000_000
"""Requests per minute of the benchmark's policies: one client at tens of thousands of requests
per second is counted on every request and never refused (GCRA's interval is a whole 6 µs)."""

POLICIES: tuple[dict[str, Any], ...] = (
    {"name": "global", "key": "ip", "algorithm": "gcra", "limit": HIGH_LIMIT, "period": "1m"},
    {
        "name": "api",
        "match": {"paths": [PATH]},
        "key": "ip",
        "algorithm": "gcra",
        "limit": HIGH_LIMIT,
        "period": "1m",
    },
    {
        "name": "reads",
        "match": {"methods": ["GET"]},
        "key": "ip",
        "algorithm": "gcra",
        "limit": HIGH_LIMIT,
        "period": "1m",
    },
)
"""Three enforced policies keyed by address that all match ``GET /hello`` (``global`` replaces
the built-in one); the gate decides them in one store call."""

RL_OFF = "ratelimit off"
RL_ON = "3 ip policies (memory store)"
RL_NO_HEADERS = "3 ip policies, headers off"
RL_NO_BANS = "3 ip policies, bans off"
RL_SHADOW = "built-in global alone, shadow"

NOOP = "no-op call (baseline)"
GCRA_1 = "gcra, 1 check"
GCRA_3 = "gcra, 3 checks"
GCRA_3_BANS = "gcra, 3 checks + ban state"

_CLIENT = "127.0.0.1"
_BANS = BanRule(threshold=50, window=300.0, durations=(60.0, 300.0, 1800.0), reset_after=86400.0)


def policy_toml() -> str:
    """:data:`POLICIES` as ``[[ratelimit.policies]]`` tables (for the servers' configuration)."""
    lines: list[str] = []
    for policy in POLICIES:
        lines += ["", "[[ratelimit.policies]]"]
        for key, value in policy.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RateLimitParams:
    """How much of each part to run."""

    store_iterations: int = 20000
    """Calls per batch of the store cases."""
    iterations: int = 5000
    """Requests per batch of the pipeline cases (and calls per batch of the breakdown)."""
    batches: int = 7
    redis_calls: int = 20000
    """Calls per Redis case, spread over ``redis_callers`` concurrent callers."""
    redis_callers: int = 64


QUICK = RateLimitParams(store_iterations=5000, iterations=1000, batches=3, redis_calls=4000)


@dataclass
class StoreCase:
    """One store case: nanoseconds per call for each batch."""

    name: str
    algorithm: str
    checks: int
    ns_batches: list[float] = field(default_factory=list)

    @property
    def us(self) -> float:
        return statistics.median(self.ns_batches) / 1000.0

    @property
    def per_check_us(self) -> float:
        return self.us / self.checks if self.checks else self.us


@dataclass
class RedisCase:
    """:meth:`RedisStore.evaluate` from ``callers`` concurrent callers."""

    name: str
    batch: bool
    calls: int
    callers: int
    cpu_us: float
    """This process's CPU time per call."""
    wall_us: float
    """Wall time per call (all callers together)."""
    commands: int
    """``EVALSHA`` commands the store sent."""


@dataclass
class RateLimitResult:
    params: dict[str, Any]
    store: list[StoreCase]
    pipeline: MicroResult
    """``net_us`` of a rate-limit case is its cost over :data:`RL_OFF`."""
    breakdown: list[StoreCase]
    """The gate's pieces alone (``checks`` = 1; ``algorithm`` names the object called)."""
    redis: list[RedisCase] = field(default_factory=list)
    redis_error: str = ""
    """Why the Redis part did not run (empty: it ran, or no Redis was given)."""

    def store_case(self, name: str) -> StoreCase:
        for case in self.store:
            if case.name == name:
                return case
        raise KeyError(name)

    def store_net_us(self, name: str) -> float:
        """Microseconds per call of ``name`` over the no-op call."""
        return self.store_case(name).us - self.store_case(NOOP).us

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pipeline"] = self.pipeline.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RateLimitResult:
        return cls(
            params=dict(data["params"]),
            store=[StoreCase(**c) for c in data["store"]],
            pipeline=MicroResult.from_json(data["pipeline"]),
            breakdown=[StoreCase(**c) for c in data["breakdown"]],
            redis=[RedisCase(**c) for c in data.get("redis", [])],
            redis_error=data.get("redis_error", ""),
        )


# ---------------------------------------------------------------- store


def _rule(name: str, algorithm: str, limit: int = HIGH_LIMIT) -> Rule:
    return Rule(name, algorithm, limit, 60.0, limit)  # type: ignore[arg-type]


def _store_cases() -> list[tuple[StoreCase, Callable[[], object]]]:
    """``(case, call)``: each call decides one request against its own store."""

    def noop(checks: Sequence[Check], *, client: str | None = None) -> None:
        return None

    cases: list[tuple[StoreCase, Callable[[], object]]] = []
    none: list[Check] = []
    cases.append((StoreCase(NOOP, "", 0), lambda: noop(none)))

    def evaluate(store: MemoryStore, checks: list[Check], bans: bool) -> Callable[[], object]:
        call = store.evaluate_now
        if bans:
            return lambda: call(checks, client=_CLIENT, bans=_BANS)
        return lambda: call(checks)

    gcra = [Check(_rule(n, "gcra"), f"{n}|ip:{_CLIENT}") for n in ("global", "api", "reads")]
    cases.append((StoreCase(GCRA_1, "gcra", 1), evaluate(MemoryStore(), gcra[:1], False)))
    cases.append((StoreCase(GCRA_3, "gcra", 3), evaluate(MemoryStore(), gcra, False)))
    cases.append((StoreCase(GCRA_3_BANS, "gcra", 3), evaluate(MemoryStore(), gcra, True)))
    for algorithm in ("sliding_window", "fixed_window", "sliding_log"):
        check = Check(_rule(algorithm, algorithm), f"{algorithm}|ip:{_CLIENT}")
        name = f"{algorithm}, 1 check"
        cases.append((StoreCase(name, algorithm, 1), evaluate(MemoryStore(), [check], False)))
    quota = [Check(_rule("quota", "quota"), f"quota|ip:{_CLIENT}", window=20260101)]
    cases.append((StoreCase("quota, 1 check", "quota", 1), evaluate(MemoryStore(), quota, False)))
    slots = [Check(_rule("slots", "concurrency"), f"slots|ip:{_CLIENT}")]
    leases = MemoryStore()
    take, give = leases.evaluate_now, leases.release_now

    def acquire_release() -> None:
        take(slots)
        give(slots)

    cases.append((StoreCase("concurrency, 1 check (+ release)", "concurrency", 1), acquire_release))
    return cases


def _loop(call: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        call()
    return (time.perf_counter_ns() - start) / iterations


async def _async_loop(call: Callable[[], Any], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await call()
    return (time.perf_counter_ns() - start) / iterations


# ---------------------------------------------------------------- pipeline


def _settings(directory: Path, name: str, ratelimit: dict[str, Any]) -> Settings:
    path = directory / f"bastion-{name}.toml"
    path.write_text(bastion_toml(directory / f"bastion-{name}.db", access_log=False))
    return Settings.from_file(path).with_updates(ratelimit=ratelimit)


_THREE = {"policies": [dict(p) for p in POLICIES]}
_ENGINES: dict[str, tuple[dict[str, Any], str]] = {
    RL_OFF: ({"enabled": False}, "ratelimit.enabled = false"),
    RL_ON: (_THREE, "policies `global`, `api`, `reads` (bench/ratelimit.py)"),
    RL_NO_HEADERS: ({**_THREE, "headers": False}, "same, ratelimit.headers = false"),
    RL_NO_BANS: ({**_THREE, "bans": {"enabled": False}}, "same, ratelimit.bans.enabled = false"),
    RL_SHADOW: (
        {"policies": [{"name": "global", "limit": 1200, "burst": 200, "mode": "shadow"}]},
        'built-in `global` with mode = "shadow" (bench/apps.py)',
    ),
}


def _scope_factory() -> Callable[[], Scope]:
    copy = request_scope().copy
    return lambda: copy()


def _breakdown(engine: Bastion) -> list[tuple[StoreCase, Callable[[], Any], bool]]:
    """``(case, call, awaited)``: the gate's pieces for ``GET /hello`` with three policies."""
    ratelimit = engine.ratelimit
    if ratelimit is None:
        raise RuntimeError("rate limiting is off in the three-policy engine")
    policies, limiter, store = ratelimit.policies, ratelimit.limiter, ratelimit.store
    if not isinstance(store, MemoryStore):
        raise RuntimeError("the three-policy engine does not use the memory store")
    scope = request_scope()
    state = RequestState("0" * 32, time.perf_counter(), _CLIENT, "http")
    plan = policies.plan_for(scope, state, "gate")
    checks, batch = plan.checks, plan.batch
    if len(checks) != len(POLICIES) or batch is None:
        raise RuntimeError(f"{len(checks)} policies matched, expected {len(POLICIES)} GCRA")
    bans = _BANS if ratelimit.config.bans.enabled else None
    client = plan.client
    report = RateLimitReport()
    if limiter.admit_plan(plan, bans=bans, report=report) is not None:
        raise RuntimeError("the three-policy engine refused the request")
    render = limiter.renderer.render
    plan_for = policies.plan_for
    evaluate_now, evaluate_batch = store.evaluate_now, store.evaluate_batch
    admit_plan = limiter.admit_plan

    def admit_one() -> Any:
        return admit_plan(plan, bans=bans, report=RateLimitReport())

    return [
        (
            StoreCase("PolicySet.plan_for (3 policies)", "PolicySet", 1),
            lambda: plan_for(scope, state, "gate"),
            False,
        ),
        (
            StoreCase("MemoryStore.evaluate_batch (3 checks + bans, ledger)", "MemoryStore", 1),
            lambda: evaluate_batch(batch, client, bans),
            False,
        ),
        (
            StoreCase("MemoryStore.evaluate_now (same checks, general path)", "MemoryStore", 1),
            lambda: evaluate_now(checks, client=client, bans=bans),
            False,
        ),
        (
            StoreCase("Limiter.admit_plan (store call, metrics, report)", "Limiter", 1),
            admit_one,
            False,
        ),
        (
            StoreCase("HeaderRenderer.render (3 decisions, from the plan)", "HeaderRenderer", 1),
            lambda: render(report),
            False,
        ),
        (StoreCase("RateLimitReport()", "RateLimitReport", 1), RateLimitReport, False),
    ]


# ---------------------------------------------------------------- redis


async def _redis_cases(url: str, params: RateLimitParams) -> list[RedisCase]:
    from bastion.ratelimit.redis_store import RedisStore
    from bastion.store.redis import RedisConnector

    connector = RedisConnector.from_url(url, timeout=2.0)
    cases: list[RedisCase] = []
    checks = [Check(_rule(n, "gcra"), f"{n}|ip:{_CLIENT}") for n in ("global", "api", "reads")]
    try:
        await connector.ping()
        for batch in (True, False):
            store = RedisStore(connector, prefix="bench:rl:", batch=batch)
            try:
                cases.append(await _redis_case(store, checks, batch, params))
            finally:
                await store.close()
    finally:
        await connector.close()
    return cases


async def _redis_case(
    store: Any, checks: list[Check], batch: bool, params: RateLimitParams
) -> RedisCase:
    callers = params.redis_callers
    per_caller = max(1, params.redis_calls // callers)

    async def caller(count: int) -> None:
        for _ in range(count):
            verdict = await store.evaluate(checks, client=_CLIENT, bans=_BANS)
            if not verdict.allowed:
                raise RuntimeError("the Redis store refused a request under a high limit")

    await asyncio.gather(*(caller(max(1, per_caller // 10)) for _ in range(callers)))  # warm-up
    sent = store.commands_sent
    gc.collect()
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    await asyncio.gather(*(caller(per_caller) for _ in range(callers)))
    cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
    calls = per_caller * callers
    return RedisCase(
        name=f"RedisStore.evaluate, 3 gcra checks + bans, {'batched' if batch else 'unbatched'}",
        batch=batch,
        calls=calls,
        callers=callers,
        cpu_us=cpu / calls / 1000.0,
        wall_us=wall / calls / 1000.0,
        commands=store.commands_sent - sent,
    )


# ---------------------------------------------------------------- measurement


async def _measure(
    params: RateLimitParams,
    directory: Path,
    redis_url: str | None,
    progress: Callable[[str], None] | None,
) -> RateLimitResult:
    store_runs = _store_cases()
    engines: dict[str, Bastion] = {}
    try:
        for name, (section, _) in _ENGINES.items():
            engine = Bastion(_settings(directory, f"e{len(engines)}", section))
            engines[name] = engine
            await engine.startup()
        apps: dict[str, ASGIApp] = {name: e.wrap(raw_hello) for name, e in engines.items()}
        scopes = _scope_factory()
        pipeline_cases = [
            (MicroCase(name, "baseline" if name == RL_OFF else "ratelimit", None, config), name)
            for name, (_, config) in _ENGINES.items()
        ]
        for case, _ in pipeline_cases:
            if case.name != RL_OFF:
                case.baseline = RL_OFF
        breakdown = _breakdown(engines[RL_ON])

        for case, name in pipeline_cases:  # warm-up, and every case answers 200
            sink = StatusSink()
            await run_batch(apps[name], scopes, sink, max(1, params.iterations // 10))
            if sink.status != 200:
                raise RuntimeError(f"{case.name}: answered {sink.status}, expected 200")
        for _, call in store_runs:
            _loop(call, max(1, params.store_iterations // 10))
        for index in range(params.batches):
            if progress is not None:
                progress(f"batch {index + 1}/{params.batches}")
            for store_case, call in store_runs:
                gc.collect()
                store_case.ns_batches.append(_loop(call, params.store_iterations))
            for case, name in pipeline_cases:
                gc.collect()
                sink = StatusSink()
                case.ns_batches.append(await run_batch(apps[name], scopes, sink, params.iterations))
                if sink.status != 200:
                    raise RuntimeError(f"{case.name}: answered {sink.status}, expected 200")
            for piece, call, awaited in breakdown:
                gc.collect()
                loop = _async_loop(call, params.iterations) if awaited else None
                piece.ns_batches.append(
                    await loop if loop is not None else _loop(call, params.iterations)
                )
        pipeline = MicroResult(
            iterations=params.iterations,
            batches=params.batches,
            cases=[case for case, _ in pipeline_cases],
            chain=pipeline_chain(apps[RL_ON]),
        )
    finally:
        for engine in engines.values():
            await engine.shutdown()
    result = RateLimitResult(
        params=asdict(params),
        store=[case for case, _ in store_runs],
        pipeline=pipeline,
        breakdown=[case for case, _, _ in breakdown],
    )
    if redis_url:
        if progress is not None:
            progress("redis store")
        try:
            result.redis = await _redis_cases(redis_url, params)
        except Exception as exc:
            result.redis_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return result


def run_ratelimit(
    params: RateLimitParams,
    *,
    redis_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RateLimitResult:
    """Measure every part with ``params`` (the Redis part only with ``redis_url``)."""
    with tempfile.TemporaryDirectory(prefix="bastion-ratelimit-bench-") as tmp:
        return asyncio.run(_measure(params, Path(tmp), redis_url, progress))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--redis-url", default="", help="also measure the Redis store there")
    args = parser.parse_args(argv)
    with access_log_to_devnull():
        result = run_ratelimit(
            QUICK if args.quick else RateLimitParams(),
            redis_url=args.redis_url or None,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

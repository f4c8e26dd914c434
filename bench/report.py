"""Markdown rendering of a benchmark run (``docs/benchmarks.md``).

:class:`Report` holds everything a run measured; :func:`render` turns it into the page. Nothing
here measures anything, so the page can be re-rendered from the saved results:
``python -m bench.report .bench/results.json > docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.apps import PATH
from bench.audit_log import AuditLogResult, audit_log_goals, audit_log_section
from bench.auth import (
    AUTH_IDLE,
    CACHED_BEARER,
    CACHED_TARGET_US,
    HASH_THREADS,
    PYJWT_REFERENCE_US,
    STALL_ALLOWANCE_MS,
    AuthResult,
)
from bench.cache import CacheResult, cache_goals, cache_section
from bench.micro import MicroResult
from bench.ratelimit import (
    GCRA_1,
    GCRA_3,
    NOOP,
    PIPELINE_TARGET_US,
    POLICIES,
    REDIS_COMMANDS_TARGET,
    REDIS_RATIO_TARGET,
    RL_OFF,
    RL_ON,
    STORE_TARGET_US,
    RateLimitResult,
)

__all__ = [
    "LatencyScenario",
    "LatencyTarget",
    "RateLimitSection",
    "RedisRun",
    "Report",
    "ThroughputScenario",
    "ThroughputTarget",
    "WrkRun",
    "added_latency",
    "ratio",
    "render",
    "run_spread",
]


@dataclass
class WrkRun:
    """One wrk run: requests per second and latency percentiles in milliseconds."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    non_2xx: int = 0
    socket_errors: int = 0


@dataclass
class ThroughputTarget:
    """One stack measured with wrk; ``min_ratio`` is a goal, ``reference_ratio`` a number
    measured earlier on these machines, shown for comparison only."""

    key: str
    label: str
    runs: list[WrkRun] = field(default_factory=list)
    min_ratio: float | None = None
    reference_ratio: float | None = None
    note: str = ""

    @property
    def rps(self) -> float:
        return _median([r.rps for r in self.runs])

    @property
    def p50_ms(self) -> float:
        return _median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return _median([r.p99_ms for r in self.runs])

    @property
    def failed_requests(self) -> int:
        return sum(r.non_2xx + r.socket_errors for r in self.runs)


@dataclass
class ThroughputScenario:
    key: str
    title: str
    intro: str
    baseline: str
    """Key of the target every ratio is taken against."""
    targets: list[ThroughputTarget]
    commands: list[str] = field(default_factory=list)
    reference_baseline_rps: float | None = None

    def target(self, key: str) -> ThroughputTarget:
        for item in self.targets:
            if item.key == key:
                return item
        raise KeyError(key)

    def ratio_of(self, key: str) -> float:
        return ratio(self.target(key).rps, self.target(self.baseline).rps)


@dataclass
class LatencyTarget:
    key: str
    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    """:class:`bench.loadgen.LoadResult` objects as dictionaries, one per round."""

    def median(self, series: str, pct: str) -> float:
        return _median([run[series][pct] for run in self.runs])

    @property
    def failed_requests(self) -> int:
        return sum(int(run["errors"]) + int(run["non_2xx"]) for run in self.runs)


@dataclass
class LatencyScenario:
    key: str
    title: str
    intro: str
    baseline: str
    targets: list[LatencyTarget]
    rate: float
    connections: int
    duration: float
    goals: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per target key: the most added latency allowed, ``{"p50": 0.5, "p99": 2.0}`` (ms)."""
    commands: list[str] = field(default_factory=list)

    def target(self, key: str) -> LatencyTarget:
        for item in self.targets:
            if item.key == key:
                return item
        raise KeyError(key)


@dataclass
class RedisRun:
    """What one wrk run of the rate-limit scenario cost the benchmark's Redis
    (``INFO commandstats`` before and after the run)."""

    evalsha: int
    commands: int
    """Every command Redis counted but the harness's own ``INFO`` and ``PING``, including those
    run inside scripts (``INFO commandstats`` counts both)."""
    requests: int
    """Requests wrk completed."""
    served: int = 0
    """Requests the server counted (Bastion's ``bastion_http_requests_total``); 0 when
    unknown."""
    by_command: dict[str, int] = field(default_factory=dict)

    @property
    def denominator(self) -> int:
        return self.served or self.requests


@dataclass
class RateLimitSection:
    """The rate-limit scenario: in process (:mod:`bench.ratelimit`) and under load."""

    micro: RateLimitResult | None = None
    throughput: ThroughputScenario | None = None
    redis_runs: dict[str, list[RedisRun]] = field(default_factory=dict)
    start_commands: list[str] = field(default_factory=list)
    micro_commands: list[str] = field(default_factory=list)
    duration: float = 0.0
    warmup: float = 0.0

    def per_request(self, key: str, what: str = "evalsha") -> float:
        """Median over the runs of ``what`` (``evalsha`` or ``commands``) per request."""
        values = [
            getattr(run, what) / run.denominator
            for run in self.redis_runs.get(key, [])
            if run.denominator
        ]
        return _median(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "micro": self.micro.to_json() if self.micro is not None else None,
            "throughput": asdict(self.throughput) if self.throughput is not None else None,
            "redis_runs": {k: [asdict(r) for r in v] for k, v in self.redis_runs.items()},
            "start_commands": self.start_commands,
            "micro_commands": self.micro_commands,
            "duration": self.duration,
            "warmup": self.warmup,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RateLimitSection:
        throughput = data.get("throughput")
        return cls(
            micro=RateLimitResult.from_json(data["micro"]) if data.get("micro") else None,
            throughput=_throughput_from_json(throughput) if throughput else None,
            redis_runs={
                k: [RedisRun(**r) for r in v] for k, v in data.get("redis_runs", {}).items()
            },
            start_commands=list(data.get("start_commands", [])),
            micro_commands=list(data.get("micro_commands", [])),
            duration=data.get("duration", 0.0),
            warmup=data.get("warmup", 0.0),
        )


def _throughput_from_json(data: dict[str, Any]) -> ThroughputScenario:
    return ThroughputScenario(
        **{
            **data,
            "targets": [
                ThroughputTarget(**{**t, "runs": [WrkRun(**r) for r in t["runs"]]})
                for t in data["targets"]
            ],
        }
    )


@dataclass
class Report:
    date: str
    machine: dict[str, str]
    versions: dict[str, str]
    parameters: dict[str, str]
    throughput: list[ThroughputScenario] = field(default_factory=list)
    latency: LatencyScenario | None = None
    micro: MicroResult | None = None
    micro_commands: list[str] = field(default_factory=list)
    auth: AuthResult | None = None
    auth_commands: list[str] = field(default_factory=list)
    ratelimit: RateLimitSection | None = None
    cache: CacheResult | None = None
    cache_commands: list[str] = field(default_factory=list)
    audit_log: AuditLogResult | None = None
    audit_log_commands: list[str] = field(default_factory=list)
    setup_commands: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)
    """Generated configuration files by name (``bastion.toml``, ``nginx.conf``)."""
    failures: dict[str, str] = field(default_factory=dict)
    """Scenarios that could not run, with the reason."""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["micro"] = self.micro.to_json() if self.micro is not None else None
        data["auth"] = self.auth.to_json() if self.auth is not None else None
        data["ratelimit"] = self.ratelimit.to_json() if self.ratelimit is not None else None
        data["cache"] = self.cache.to_json() if self.cache is not None else None
        data["audit_log"] = self.audit_log.to_json() if self.audit_log is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        throughput = [_throughput_from_json(s) for s in data["throughput"]]
        latency = data.get("latency")
        return cls(
            **{
                **data,
                "throughput": throughput,
                "latency": (
                    LatencyScenario(
                        **{**latency, "targets": [LatencyTarget(**t) for t in latency["targets"]]}
                    )
                    if latency
                    else None
                ),
                "micro": MicroResult.from_json(data["micro"]) if data.get("micro") else None,
                "auth": AuthResult.from_json(data["auth"]) if data.get("auth") else None,
                "cache": CacheResult.from_json(data["cache"]) if data.get("cache") else None,
                "audit_log": (
                    AuditLogResult.from_json(data["audit_log"]) if data.get("audit_log") else None
                ),
                "ratelimit": (
                    RateLimitSection.from_json(data["ratelimit"]) if data.get("ratelimit") else None
                ),
            }
        )


TIMES = "\u00d7"
"""The multiplication sign written after ratios."""
DASH = "\u2013"
_ADDED_COLUMNS = (
    "case",
    "µs/request",
    "added µs",
    f"batches µs (min{DASH}max)",
    "target µs",
    "met",
    "configuration",
)
"""Columns of the tables that compare a case with its baseline in the same run."""
"""The en dash written between the ends of a range."""


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


NOISY_SPREAD = 0.15
"""Runs of one target differing by more than this (max-min over median) are flagged."""


def _target_notes(scenario: ThroughputScenario) -> list[str]:
    """One line per target's note, and a warning for each target whose runs spread widely."""
    notes = [f"- {t.label}: {t.note}" for t in scenario.targets if t.note]
    for target in scenario.targets:
        relative = run_spread(target)
        if relative > NOISY_SPREAD:
            notes.append(
                f"- ⚠ The runs of {target.label} differ by {relative:.0%} (max{DASH}min over the "
                "median): other work on the machine disturbed some of them; read its ratio "
                "with care."
            )
    return notes


def run_spread(target: ThroughputTarget) -> float:
    """(max - min) / median of the target's requests per second (0 with fewer than 2 runs)."""
    values = [r.rps for r in target.runs]
    if len(values) < 2 or not target.rps:
        return 0.0
    return (max(values) - min(values)) / target.rps


def ratio(value: float, baseline: float) -> float:
    """``value / baseline`` (``nan`` when the baseline is zero or missing)."""
    if not baseline or math.isnan(baseline):
        return math.nan
    return value / baseline


def added_latency(scenario: LatencyScenario, key: str, pct: str) -> float:
    """Median over rounds of (target - baseline) at ``pct``, pairing runs of the same round so
    drift between rounds cancels (ms)."""
    target, base = scenario.target(key), scenario.target(scenario.baseline)
    diffs = [
        run["latency_ms"][pct] - ref["latency_ms"][pct]
        for run, ref in zip(target.runs, base.runs, strict=False)
    ]
    return _median(diffs)


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f} ms" if value >= 1 else f"{value:.3f} ms"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}{TIMES}"


def _met(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _throughput_goal(scenario: ThroughputScenario, target: ThroughputTarget) -> tuple[str, str]:
    """(goal text, met text) for one row."""
    if target.key == scenario.baseline:
        return "baseline", "—"
    value = scenario.ratio_of(target.key)
    if target.min_ratio is not None:
        ok = not math.isnan(value) and value >= target.min_ratio and not target.failed_requests
        return f"≥ {target.min_ratio:.2f}{TIMES}", _met(ok)
    if target.reference_ratio is not None:
        return f"reference {target.reference_ratio:g}{TIMES}", "—"
    return "—", "—"


def _throughput_section(scenario: ThroughputScenario, number: int) -> list[str]:
    lines = [f"## {number}. {scenario.title}", "", scenario.intro, ""]
    rows = []
    for target in scenario.targets:
        goal, met = _throughput_goal(scenario, target)
        spread = (
            f"{_num(min(r.rps for r in target.runs))}{DASH}{_num(max(r.rps for r in target.runs))}"
            if target.runs
            else "n/a"
        )
        label = target.label
        if target.failed_requests:
            label += f" ⚠ {target.failed_requests} failed or non-2xx responses"
        rows.append(
            [
                label,
                _num(target.rps),
                spread,
                _ms(target.p50_ms),
                _ms(target.p99_ms),
                _x(scenario.ratio_of(target.key)),
                goal,
                met,
            ]
        )
    lines += _table(
        ["stack", "rps (median)", f"rps (min{DASH}max)", "p50", "p99", "ratio", "target", "met"],
        rows,
    )
    notes = _target_notes(scenario)
    if scenario.reference_baseline_rps is not None:
        base = scenario.target(scenario.baseline)
        notes.append(
            f"- Baseline reference measured earlier on these machines: "
            f"≈ {_num(scenario.reference_baseline_rps)} rps ({base.label}); "
            f"this run: {_num(base.rps)} rps."
        )
    if notes:
        lines += ["", *notes]
    lines += ["", "Commands:", "", "```sh", *scenario.commands, "```", ""]
    return lines


def _latency_section(scenario: LatencyScenario, number: int) -> list[str]:
    lines = [f"## {number}. {scenario.title}", "", scenario.intro, ""]
    rows = []
    for target in scenario.targets:
        label = target.label
        if target.failed_requests:
            label += f" ⚠ {target.failed_requests} failed or non-2xx responses"
        row = [
            label,
            _ms(target.median("latency_ms", "p50")),
            _ms(target.median("latency_ms", "p90")),
            _ms(target.median("latency_ms", "p99")),
            _ms(target.median("latency_ms", "p999")),
            _ms(target.median("latency_ms", "max")),
        ]
        if target.key == scenario.baseline:
            row += ["baseline", "baseline"]
        else:
            row += [
                _ms(added_latency(scenario, target.key, "p50")),
                _ms(added_latency(scenario, target.key, "p99")),
            ]
        rows.append(row)
    lines += _table(["path", "p50", "p90", "p99", "p99.9", "max", "added p50", "added p99"], rows)
    lines.append("")
    goal_rows = []
    for key, goals in scenario.goals.items():
        target = scenario.target(key)
        for pct, limit in goals.items():
            added = added_latency(scenario, key, pct)
            ok = not math.isnan(added) and added <= limit and not target.failed_requests
            goal_rows.append(
                [f"{target.label}, added {pct}", _ms(added), f"≤ {_ms(limit)}", _met(ok)]
            )
    if goal_rows:
        lines += _table(["goal", "measured", "target", "met"], goal_rows)
        lines.append("")
    lag_p50 = _median([_median([r["lag_ms"]["p50"] for r in t.runs]) for t in scenario.targets])
    lag_p99 = _median([_median([r["lag_ms"]["p99"] for r in t.runs]) for t in scenario.targets])
    lines += [
        f"Latency is measured from each request's scheduled send time (coordinated-omission "
        f"corrected). The generator kept its schedule to within {_ms(lag_p50)} at p50 and "
        f"{_ms(lag_p99)} at p99 (actual send minus scheduled send), which bounds its own share "
        f'of the figures. "Added" is the median over the rounds of the difference to the '
        f"direct run of the same round.",
        "",
        "Commands:",
        "",
        "```sh",
        *scenario.commands,
        "```",
        "",
    ]
    return lines


def _micro_section(result: MicroResult, commands: Sequence[str], number: int) -> list[str]:
    lines = [
        f"## {number}. In-process microbenchmark",
        "",
        "Microseconds per request through the ASGI stack with no network: the app is called "
        "directly with a copy of a prebuilt `GET /hello` scope (headers `host`, `user-agent`, "
        "`accept`, as curl sends them), a `receive` returning an empty body and a `send` that "
        "drops messages. The terminal is a raw ASGI hello. Each case ran "
        f"{result.batches} interleaved batches of {_num(result.iterations)} requests; the table "
        "shows the median batch. *Own cost* is the case minus its baseline: the terminal alone, "
        "or (for stages that read the request state the request-id stage creates) the terminal "
        "with a state built per request.",
        "",
    ]
    rows = []
    for case in result.cases:
        spread = f"{min(case.ns_batches) / 1000:.2f}{DASH}{max(case.ns_batches) / 1000:.2f}"
        own = "—" if case.baseline is None else f"{result.net_us(case.name):.2f}"
        rows.append([case.name, f"{case.median_ns / 1000:.2f}", own, spread, case.config or "—"])
    lines += _table(
        [
            "case",
            "µs/request",
            "own cost µs",
            f"batches µs (min{DASH}max)",
            "configuration (beyond defaults)",
        ],
        rows,
    )
    lines.append("")
    stages = [c for c in result.cases if c.group == "stage" and not c.config]
    default_sum = sum(result.net_us(c.name) for c in stages)
    pipelines = [c for c in result.cases if c.group == "pipeline"]
    derived = []
    if len(pipelines) == 2:
        full, quiet = (result.net_us(c.name) for c in pipelines)
        derived.append(
            f"- The access log line costs {full - quiet:.2f} µs per request "
            f"(full pipeline with it minus without it)."
        )
        derived.append(
            f"- Stages of the default chain measured alone add up to {default_sum:.2f} µs; "
            f"the full pipeline costs {full:.2f} µs (the rest is the application wrapper, the "
            f"stages' interaction and measurement noise)."
        )
    if result.chain:
        derived.insert(
            0,
            "- The default chain, outermost first: "
            + " → ".join(f"`{name}`" for name in result.chain)
            + " → terminal.",
        )
    lines += [*derived, "", "Command:", "", "```sh", *commands, "```", ""]
    return lines


def _auth_goals(result: AuthResult) -> list[list[str]]:
    """Rows of the identity targets: (goal, measured, target, met)."""
    added = result.requests.net_us(CACHED_BEARER)
    stall = result.stall
    idle_p99, loaded_p99 = stall.phases["idle"]["p99"], stall.phases["logins"]["p99"]
    return [
        [
            "authenticated request with a cached access token: added per request (in process)",
            f"{added:.2f} µs",
            f"≤ {CACHED_TARGET_US:g} µs",
            _met(not math.isnan(added) and added <= CACHED_TARGET_US),
        ],
        [
            f"another request's p99 while {stall.concurrency} logins hash "
            f"(idle p99 {_ms(idle_p99)})",
            _ms(loaded_p99),
            f"≤ idle p99 + {_ms(STALL_ALLOWANCE_MS)}",
            _met(stall.met()),
        ],
    ]


def _auth_section(result: AuthResult, commands: Sequence[str], number: int) -> list[str]:
    params = result.params
    requests = result.requests
    lines = [
        f"## {number}. Identity (auth)",
        "",
        "In one process and one asyncio event loop (`bench/auth.py`), over throwaway SQLite "
        "databases; every request goes through the full pipeline `Bastion(settings).wrap` builds "
        "around the raw ASGI hello, as in the microbenchmark. The protected cases have one rule, "
        f'`path = "{PATH}"` with `authenticated = true`, and present the credential of a user '
        "without roles. *Added* is the case minus the same request (same path and headers) "
        "through the same pipeline with `auth.enabled = false`, measured in the same run: "
        f"{requests.batches} interleaved batches of {_num(requests.iterations)} requests "
        f"({_num(params['first_sight_iterations'])} for first sights), median batch.",
        "",
        "### Request path",
        "",
    ]
    rows = []
    for case in requests.cases:
        spread = f"{min(case.ns_batches) / 1000:.2f}{DASH}{max(case.ns_batches) / 1000:.2f}"
        added = "baseline" if case.baseline is None else f"{requests.net_us(case.name):.2f}"
        target, met = "—", "—"
        if case.name == CACHED_BEARER:
            value = requests.net_us(case.name)
            target, met = f"≤ {CACHED_TARGET_US:g}", _met(value <= CACHED_TARGET_US)
        rows.append(
            [
                case.name,
                f"{case.median_ns / 1000:.2f}",
                added,
                spread,
                target,
                met,
                case.config or "—",
            ]
        )
    lines += _table(list(_ADDED_COLUMNS), rows)
    lines += [
        "",
        f"- *{AUTH_IDLE}* is the cost every default installation pays: the auth stage with "
        "nothing to enforce and no credential to verify.",
        "- *Cached*: the credential was verified before, so the stage finds it in the verified-"
        "credential cache (an entry is re-verified once `auth.status_cache_ttl` has passed). "
        "*First sight*: the cache entry is dropped before each request, so each one pays the "
        "full verification, the account snapshot (from its own cache), the session looked up "
        "in the database and the new cache entry.",
        "",
        "### Verification alone",
        "",
        "The same access token verified in a loop by Bastion's `TokenVerifier.verify_now` "
        "(strict parsing, every claim checked) and by PyJWT's `jwt.decode` (signature, `exp`, "
        "`iat`, `nbf`, `aud`, `iss`) with the same key object; "
        f"{requests.batches} interleaved batches of {_num(params['verify_iterations'])}, "
        "median batch.",
        "",
    ]
    rows = [
        [
            case.algorithm,
            f"{case.bastion_us:.1f}",
            f"{case.pyjwt_us:.1f}",
            _x(ratio(case.bastion_us, case.pyjwt_us)),
            f"≈ {PYJWT_REFERENCE_US.get(case.algorithm, math.nan):g}",
        ]
        for case in result.verify
    ]
    lines += _table(
        [
            "algorithm",
            "Bastion µs/token",
            "PyJWT µs/token",
            "Bastion / PyJWT",
            "PyJWT per the issue µs",
        ],
        rows,
    )
    login = result.login
    share = ratio(login.argon2_p50, login.login_p50)
    lines += [
        "",
        "### Login",
        "",
        f"`POST /_bastion/auth/login` through the pipeline, {len(login.login_ms)} logins one "
        f"after the other (after 2 unrecorded), {login.parameters} (the defaults); then the "
        f"argon2id verification of the same stored hash alone, {len(login.argon2_ms)} times "
        "on the main thread.",
        "",
        *_table(
            ["measure", "p50", "p95"],
            [
                ["login", _ms(login.login_p50), _ms(login.login_p95)],
                ["argon2id verify alone", _ms(login.argon2_p50), _ms(login.argon2_p95)],
                [
                    "the rest (throttle, user, session, tokens)",
                    _ms(login.login_p50 - login.argon2_p50),
                    "—",
                ],
            ],
        ),
        "",
        f"argon2id is {share:.0%} of the median login."
        if not math.isnan(share)
        else "argon2id's share of the median login could not be computed.",
        "",
    ]
    lines += _stall_lines(result)
    lines += ["Command:", "", "```sh", *commands, "```", ""]
    return lines


_STALL_PHASES = {
    "idle": "nothing else running",
    "logins": "{concurrency} logins continuously in flight",
    "threads": f"argon2id verifying in {HASH_THREADS} threads, nothing on the loop",
    "on_loop": "argon2id verifying on the event loop (control)",
}


def _stall_lines(result: AuthResult) -> list[str]:
    stall = result.stall
    idle = stall.phases["idle"]
    lines = [
        "### Other requests while logins hash",
        "",
        f"A probe `GET {stall.path}` (no rule, no credential, full pipeline) arrives every "
        f"{stall.interval_ms:g} ms for {stall.seconds:g} s per phase, handed to the event loop "
        "from another thread as a socket's readiness would be; its latency is counted from the "
        "scheduled arrival, so time spent waiting for a busy loop counts. The process may use "
        "CPUs 0 and 1.",
        "",
    ]
    rows = []
    for key, label in _STALL_PHASES.items():
        phase = stall.phases.get(key)
        if phase is None:
            continue
        rows.append(
            [
                label.format(concurrency=stall.concurrency),
                _num(phase["count"]),
                _ms(phase["p50"]),
                _ms(phase["p90"]),
                _ms(phase["p99"]),
                _ms(phase["max"]),
                _x(ratio(phase["p99"], idle["p99"])),
            ]
        )
    lines += _table(["phase", "probes", "p50", "p90", "p99", "max", "p99 / idle p99"], rows)
    completed = ", ".join(f"{count}{TIMES} {code}" for code, count in stall.logins.items())
    lines += [
        "",
        f"Logins completed during the loaded phase: {completed or 'none'}.",
        "",
        f"*Unaffected* means: the probe's p99 with logins in flight is at most the idle p99 plus "
        f"{_ms(STALL_ALLOWANCE_MS)}, and every login succeeded. One argon2id verification run "
        "on the loop would instead add its whole duration (the control row) to every request "
        f"behind it. Measured: {_ms(stall.phases['logins']['p99'])} against "
        f"{_ms(idle['p99'])} idle (+{_ms(stall.added_p99())}): {_met(stall.met())}.",
        "",
    ]
    return lines


_RL_TARGET_ROWS = {"bastion_redis"}


def _ratelimit_goals(section: RateLimitSection) -> list[list[str]]:
    """Rows of the rate-limit targets: (goal, measured, target, met)."""
    rows: list[list[str]] = []
    micro = section.micro
    if micro is not None:
        noop = micro.store_case(NOOP).us
        for name, checks in ((GCRA_3, 3), (GCRA_1, 1)):
            value = micro.store_case(name).per_check_us
            rows.append(
                [
                    f"memory store: one GCRA decision per policy, {checks} check(s) per "
                    f"`evaluate_now` (baseline: a no-op call, {noop:.3f} µs)",
                    f"{value:.2f} µs",
                    f"< {STORE_TARGET_US:g} µs",
                    _met(value < STORE_TARGET_US),
                ]
            )
        added = micro.pipeline.net_us(RL_ON)
        base = micro.pipeline.case(RL_OFF).median_ns / 1000
        rows.append(
            [
                f"rate-limit stages, {len(POLICIES)} policies, memory: added per request in "
                f"process (baseline: rate limiting off, {base:.2f} µs)",
                f"{added:.2f} µs",
                f"≤ {PIPELINE_TARGET_US:g} µs",
                _met(not math.isnan(added) and added <= PIPELINE_TARGET_US),
            ]
        )
    scenario = section.throughput
    if scenario is not None:
        runs = section.redis_runs.get("bastion_redis", [])
        worst = max(
            (run.evalsha / run.denominator for run in runs if run.denominator), default=math.nan
        )
        served = sum(run.denominator for run in runs)
        rows.append(
            [
                f"Redis: commands per anonymous request, EVALSHA calls over requests served "
                f"(worst run; {_num(served)} requests served)",
                "n/a" if math.isnan(worst) else f"{worst:.3f}",
                f"≤ {REDIS_COMMANDS_TARGET:g}",
                _met(not math.isnan(worst) and worst <= REDIS_COMMANDS_TARGET),
            ]
        )
        off, on = scenario.target("bastion_off"), scenario.target("bastion_redis")
        value = ratio(on.rps, off.rps)
        rows.append(
            [
                f"Bastion, {len(POLICIES)} policies in Redis vs the same pipeline without rate "
                f"limiting ({_num(off.rps)} rps)",
                _x(value),
                f"≥ {REDIS_RATIO_TARGET:.2f}{TIMES}",
                _met(
                    not math.isnan(value) and value >= REDIS_RATIO_TARGET and not on.failed_requests
                ),
            ]
        )
    return rows


def _ratelimit_section(section: RateLimitSection, number: int) -> list[str]:
    lines = [f"## {number}. Rate limiting", ""]
    policies = ", ".join(f"`{p['name']}`" for p in POLICIES)
    micro = section.micro
    if micro is not None:
        lines += _ratelimit_micro_lines(micro, policies, section.micro_commands)
    scenario = section.throughput
    if scenario is not None:
        lines += _ratelimit_load_lines(section, scenario, policies)
    return lines


def _rps_spread(target: ThroughputTarget) -> str:
    if not target.runs:
        return "n/a"
    values = [r.rps for r in target.runs]
    return f"{_num(min(values))}{DASH}{_num(max(values))}"


def _spread_us(ns: Sequence[float]) -> str:
    return f"{min(ns) / 1000:.2f}{DASH}{max(ns) / 1000:.2f}" if ns else "n/a"


def _ratelimit_micro_lines(
    micro: RateLimitResult, policies: str, commands: Sequence[str]
) -> list[str]:
    params = micro.params
    lines = [
        "### Memory store",
        "",
        "`MemoryStore.evaluate_now` called in a loop (`bench/ratelimit.py`) on existing buckets "
        "of one client, limits never reached; every algorithm in a store of its own. "
        f"{params['batches']} interleaved batches of {_num(params['store_iterations'])} calls, "
        "median batch. *Per policy* is the call divided by its checks; *net* subtracts the same "
        "loop calling a function that does nothing.",
        "",
    ]
    rows = []
    noop = micro.store_case(NOOP).us
    for case in micro.store:
        target, met = "—", "—"
        if case.name in (GCRA_1, GCRA_3):
            target = f"< {STORE_TARGET_US:g}"
            met = _met(case.per_check_us < STORE_TARGET_US)
        rows.append(
            [
                case.name,
                f"{case.us:.3f}",
                "—" if not case.checks else f"{case.per_check_us:.3f}",
                "baseline" if case.name == NOOP else f"{case.us - noop:.3f}",
                _spread_us(case.ns_batches),
                target,
                met,
            ]
        )
    lines += _table(
        [
            "case",
            "µs/call",
            "per policy µs",
            "net µs",
            f"batches µs (min{DASH}max)",
            "target µs/policy",
            "met",
        ],
        rows,
    )
    pipeline = micro.pipeline
    lines += [
        "",
        "### Stages in process",
        "",
        "`GET /hello` through the full pipeline `Bastion(settings).wrap` builds around the raw "
        "ASGI hello (as in the microbenchmark; access log off; bans on, as by default), with "
        f"three enforced GCRA policies keyed by `ip` that all match ({policies}, limits never "
        "reached, memory store). *Added* is the case minus the same pipeline with rate "
        f"limiting off, measured in the same run: {pipeline.batches} interleaved batches of "
        f"{_num(pipeline.iterations)} requests, median batch.",
        "",
    ]
    rows = []
    for step in pipeline.cases:
        added = "baseline" if step.baseline is None else f"{pipeline.net_us(step.name):.2f}"
        target, met = "—", "—"
        if step.name == RL_ON:
            value = pipeline.net_us(step.name)
            target, met = f"≤ {PIPELINE_TARGET_US:g}", _met(value <= PIPELINE_TARGET_US)
        rows.append(
            [
                step.name,
                f"{step.median_ns / 1000:.2f}",
                added,
                _spread_us(step.ns_batches),
                target,
                met,
                step.config or "—",
            ]
        )
    lines += _table(list(_ADDED_COLUMNS), rows)
    if pipeline.chain:
        lines += [
            "",
            "The chain with rate limiting on, outermost first: "
            + " → ".join(f"`{name}`" for name in pipeline.chain)
            + " → terminal.",
        ]
    lines += [
        "",
        "### Where the gate's time goes",
        "",
        "Each piece of the gate's work for that request called alone in a loop, with the "
        "objects of the three-policy pipeline (same batches):",
        "",
    ]
    rows = [
        [piece.name, f"{piece.us:.2f}", _spread_us(piece.ns_batches)] for piece in micro.breakdown
    ]
    lines += _table(["piece", "µs/call", f"batches µs (min{DASH}max)"], rows)
    if micro.redis:
        lines += [
            "",
            "### Redis store in process",
            "",
            "`RedisStore.evaluate` of the same three checks with the client's ban state, from "
            "concurrent callers on one event loop, against the benchmark's redis-server (CPU "
            "time of the calling process, which is what Bastion's core pays):",
            "",
        ]
        rows = [
            [
                case.name,
                _num(case.callers),
                _num(case.calls),
                f"{case.cpu_us:.1f}",
                f"{case.wall_us:.1f}",
                f"{case.commands / case.calls:.3f}" if case.calls else "n/a",
            ]
            for case in micro.redis
        ]
        lines += _table(
            [
                "case",
                "callers",
                "calls",
                "CPU µs/call",
                "wall µs/call",
                "EVALSHA per call",
            ],
            rows,
        )
    elif micro.redis_error:
        lines += ["", f"The Redis store was not measured in process: {micro.redis_error}"]
    lines += ["", "Command:", "", "```sh", *commands, "```", ""]
    return lines


def _ratelimit_load_lines(
    section: RateLimitSection, scenario: ThroughputScenario, policies: str
) -> list[str]:
    lines = [
        "### Under load",
        "",
        scenario.intro,
        f"Bastion counts the three policies ({policies}) per request; `limits.aio` and slowapi "
        "count three limits each (`bench/apps.py`). *Redis commands* are the deltas of "
        "`INFO commandstats` over each run divided by the requests served (Bastion's own "
        "request count; wrk's for the others), median over the runs.",
        "",
    ]
    base_off = scenario.target("bastion_off")
    rows = []
    for target in scenario.targets:
        label = target.label
        if target.failed_requests:
            label += f" ⚠ {target.failed_requests} failed or non-2xx responses"
        vs_off = "—"
        if target.key.startswith("bastion_") and target.key != "bastion_off":
            vs_off = _x(ratio(target.rps, base_off.rps))
        elif target.key == "bastion_off":
            vs_off = "baseline"
        commands = "—"
        if target.key.endswith("_redis"):
            commands = (
                f"{section.per_request(target.key):.3f} / "
                f"{section.per_request(target.key, 'commands'):.3f}"
            )
        target_text, met = "—", "—"
        if target.key in _RL_TARGET_ROWS:
            value = ratio(target.rps, base_off.rps)
            target_text = f"≥ {REDIS_RATIO_TARGET:.2f}{TIMES} of off; ≤ 1 EVALSHA"
            worst = max(
                (
                    r.evalsha / r.denominator
                    for r in section.redis_runs.get(target.key, [])
                    if r.denominator
                ),
                default=math.nan,
            )
            met = _met(
                not math.isnan(value)
                and value >= REDIS_RATIO_TARGET
                and not math.isnan(worst)
                and worst <= REDIS_COMMANDS_TARGET
                and not target.failed_requests
            )
        rows.append(
            [
                label,
                _num(target.rps),
                _rps_spread(target),
                _ms(target.p50_ms),
                _ms(target.p99_ms),
                "baseline"
                if target.key == scenario.baseline
                else _x(scenario.ratio_of(target.key)),
                vs_off,
                commands,
                target_text,
                met,
            ]
        )
    lines += _table(
        [
            "stack",
            "rps (median)",
            f"rps (min{DASH}max)",
            "p50",
            "p99",
            "vs bare Starlette",
            "vs Bastion off",
            "Redis commands/request (EVALSHA / all, inside scripts included)",
            "target",
            "met",
        ],
        rows,
    )
    notes = _target_notes(scenario)
    mix: dict[str, int] = {}
    for run in section.redis_runs.get("bastion_redis", []):
        for name, calls in run.by_command.items():
            mix[name] = mix.get(name, 0) + calls
    if mix:
        notes.append(
            "- Commands Redis counted during Bastion's Redis runs (those its script runs "
            "included): "
            + ", ".join(f"`{name}` {_num(calls)}" for name, calls in sorted(mix.items()))
            + "."
        )
    if notes:
        lines += ["", *notes]
    lines += ["", "Commands:", "", "```sh", *scenario.commands, "```", ""]
    return lines


def _summary(report: Report) -> list[str]:
    rows = []
    for scenario in report.throughput:
        for target in scenario.targets:
            if target.min_ratio is None:
                continue
            value = scenario.ratio_of(target.key)
            _, met = _throughput_goal(scenario, target)
            rows.append(
                [
                    f"{target.label} vs {scenario.target(scenario.baseline).label}",
                    _x(value),
                    f"≥ {target.min_ratio:.2f}{TIMES}",
                    met,
                ]
            )
    if report.latency is not None:
        for key, goals in report.latency.goals.items():
            path = report.latency.target(key)
            for pct, limit in goals.items():
                added = added_latency(report.latency, key, pct)
                ok = not math.isnan(added) and added <= limit and not path.failed_requests
                rows.append(
                    [
                        f"{path.label}: added {pct} latency at {_num(report.latency.rate)} req/s",
                        _ms(added),
                        f"≤ {_ms(limit)}",
                        _met(ok),
                    ]
                )
    if report.auth is not None:
        rows += _auth_goals(report.auth)
    if report.ratelimit is not None:
        rows += _ratelimit_goals(report.ratelimit)
    if report.cache is not None:
        rows += cache_goals(report.cache)
    if report.audit_log is not None:
        rows += audit_log_goals(report.audit_log)
    if not rows:
        return []
    return ["## Targets at a glance", "", *_table(["goal", "measured", "target", "met"], rows), ""]


def render(report: Report) -> str:
    """The Markdown page for ``report``."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. "
        "Numbers from a shared, noisy 2-core machine: compare ratios within one run, not "
        "absolute numbers across runs.",
        "",
        f"Run: {report.date}.",
        "",
        "## Machine and method",
        "",
        *_table(["", ""], [[k, v] for k, v in report.machine.items()]),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()) + ".",
        "",
        *_table(["parameter", "value"], [[k, v] for k, v in report.parameters.items()]),
        "",
    ]
    lines += [f"- {note}" for note in report.notes]
    if report.notes:
        lines.append("")
    if report.setup_commands:
        lines += ["Set-up:", "", "```sh", *report.setup_commands, "```", ""]
    else:
        lines += [
            "wrk and nginx were already installed (`make bench` installs them with apt-get "
            "when they are missing).",
            "",
        ]
    if report.failures:
        lines += ["## Scenarios that did not run", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in report.failures.items()]
        lines.append("")
    lines += _summary(report)
    number = 0
    for scenario in report.throughput:
        number += 1
        lines += _throughput_section(scenario, number)
    if report.latency is not None:
        number += 1
        lines += _latency_section(report.latency, number)
    if report.micro is not None:
        number += 1
        lines += _micro_section(report.micro, report.micro_commands, number)
    if report.auth is not None:
        number += 1
        lines += _auth_section(report.auth, report.auth_commands, number)
    if report.ratelimit is not None and (
        report.ratelimit.micro is not None or report.ratelimit.throughput is not None
    ):
        number += 1
        lines += _ratelimit_section(report.ratelimit, number)
    if report.cache is not None:
        number += 1
        lines += cache_section(report.cache, report.cache_commands, number)
    if report.audit_log is not None:
        number += 1
        lines += audit_log_section(report.audit_log, report.audit_log_commands, number)
    if report.configs:
        lines += ["## Generated configuration", ""]
        for name, text in report.configs.items():
            lang = "nginx" if name.endswith(".conf") else "toml"
            lines += [f"`{name}`:", "", f"```{lang}", text.rstrip("\n"), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results", type=Path, help="results JSON written by bench.run")
    args = parser.parse_args(argv)
    report = Report.from_json(json.loads(args.results.read_text()))
    sys.stdout.write(render(report))


if __name__ == "__main__":
    main()

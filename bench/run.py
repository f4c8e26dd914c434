"""Benchmark orchestrator: ``make bench`` → ``docs/benchmarks.md``.

Scenarios (all in one run unless ``--only`` picks some):

- ``middleware`` — bare Starlette vs Bastion-wrapped (access log on and off) vs a typical
  hand-assembled FastAPI stack vs bare FastAPI, each on uvicorn; wrk at full speed.
- ``gateway`` — the demo upstream directly vs through ``bastion serve`` vs Bastion's server and
  proxy terminal with no stage (:mod:`bench.floor`) vs through nginx; wrk.
- ``latency`` — the same three paths at a fixed 1,000 requests/s (:mod:`bench.loadgen`).
- ``micro`` — microseconds per request through the ASGI stages, in process (:mod:`bench.micro`).
- ``auth`` — identity in process (:mod:`bench.auth`): a request with a cached access token or API
  key, first sight of a token (HS256, EdDSA) against PyJWT, logins, and other requests' latency
  while logins hash.
- ``ratelimit`` — rate limiting: the memory store's decisions and the stages' cost in process
  (:mod:`bench.ratelimit`), then wrk against bare Starlette and Bastion with rate limiting off,
  on with Redis and on with memory, beside ``limits.aio`` and slowapi on the same app; a
  redis-server of its own (pinned beside the load generator) counts the commands of each run.
- ``cache`` — the tiered cache in process (:mod:`bench.cache`): hits per tier beside cashews,
  cross-instance invalidation latency, and the L1's hit rate on a Zipf stream beside LRU.
- ``cache_http`` — the HTTP response cache (:mod:`bench.cache_http`): ``bastion serve`` answering
  a cacheable demo endpoint from its cache, and without it, beside bare Starlette; wrk.
- ``audit`` — the audited gateway (:mod:`bench.audit`): ``bastion serve`` with inspection in
  monitor mode, every request detected and audited, with ``[audit]`` on and off; wrk.
- ``audit_log`` — the audit log alone (:mod:`bench.audit_log`): events per second committed to
  SQLite and to a throwaway PostgreSQL (pinned beside the load generator) with group commit.

Servers (and, for the proxies, the upstream too, as a sidecar sharing its core) are pinned to
CPU 0, the load generator to CPU 1. Every target gets a warm-up, then the measured runs are
interleaved (A, B, C, A, B, C, …) so drift hits every target alike, and the median is reported.
Every server runs in its own process group and is stopped however the run ends.

Environment: ``BENCH_DURATION`` (seconds per wrk run, default 5), ``BENCH_WARMUP`` (seconds per
target, default 2), ``BENCH_RUNS`` (rounds, default 3), ``BENCH_LATENCY_DURATION`` (seconds per
fixed-rate run, default 10), ``BENCH_RATE`` (requests/s, default 1000), ``BENCH_QUIET_WAIT``
(seconds the whole run may spend waiting for CPUs 0 and 1 to be idle before measured runs, so
other work on a shared machine does not land on one target only; default 180, 0 disables).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.apps import PATH, bastion_toml, bearer_token, configured_sections
from bench.audit import (
    audited_gateway_rows,
    audited_gateway_scenario,
    audited_toml,
    audited_url,
    recorded_events,
)
from bench.audit_log import AuditLogResult
from bench.auth import AuthResult
from bench.cache import CacheResult
from bench.cache_http import (
    CACHED_PATH,
    cache_http_rows,
    cache_http_scenario,
    cached_gateway_toml,
)
from bench.micro import MicroResult
from bench.ratelimit import RateLimitResult, policy_toml
from bench.report import (
    LatencyScenario,
    LatencyTarget,
    RateLimitSection,
    RedisRun,
    Report,
    ThroughputScenario,
    ThroughputTarget,
    WrkRun,
    render,
)

__all__ = ["SCENARIOS", "main", "parse_wrk"]

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
DOC = REPO / "docs" / "benchmarks.md"
SCENARIOS = (
    "middleware",
    "gateway",
    "latency",
    "micro",
    "auth",
    "ratelimit",
    "cache",
    "cache_http",
    "audit",
    "audit_log",
)
SERVER_CPU = "0"
LOAD_CPU = "1"
WRK_CONNECTIONS = 64
LATENCY_CONNECTIONS = 16
START_TIMEOUT = 60.0
VERSIONED = (
    "bastion",
    "uvicorn",
    "starlette",
    "fastapi",
    "slowapi",
    "limits",
    "PyJWT",
    "aiohttp",
    "httptools",
    "uvloop",
    "pydantic",
    "structlog",
    "orjson",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options


@dataclass
class Options:
    duration: int
    warmup: int
    runs: int
    latency_duration: float
    rate: float
    micro_iterations: int
    micro_batches: int
    only: tuple[str, ...]
    output: Path
    quick: bool
    gate: QuietGate = field(default_factory=lambda: QuietGate(budget=0.0))


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run (1 s runs, one round); writes .bench/benchmarks.md",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        default=[],
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Markdown output (default docs/benchmarks.md for a full run, "
        ".bench/benchmarks.md for --quick or --only)",
    )
    args = parser.parse_args(argv)
    only = tuple(s for s in SCENARIOS if s in args.only) or SCENARIOS
    partial = args.quick or only != SCENARIOS
    output = args.output or (WORK / "benchmarks.md" if partial else DOC)
    if args.quick:
        return Options(
            duration=1,
            warmup=1,
            runs=1,
            latency_duration=2.0,
            rate=_env_number("BENCH_RATE", 1000),
            micro_iterations=500,
            micro_batches=2,
            only=only,
            output=output,
            quick=True,
        )
    # wrk takes whole seconds.
    quiet_wait = os.environ.get("BENCH_QUIET_WAIT", "").strip()
    return Options(
        duration=max(1, round(_env_number("BENCH_DURATION", 5))),
        warmup=max(1, round(_env_number("BENCH_WARMUP", 2))),
        runs=max(1, round(_env_number("BENCH_RUNS", 3))),
        latency_duration=_env_number("BENCH_LATENCY_DURATION", 10),
        rate=_env_number("BENCH_RATE", 1000),
        micro_iterations=20000,
        micro_batches=7,
        only=only,
        output=output,
        quick=False,
        gate=QuietGate(budget=float(quiet_wait) if quiet_wait else 180.0),
    )


# ---------------------------------------------------------------- tools


def ensure_tools(setup: list[str], packages: Sequence[str] = ("wrk", "nginx")) -> None:
    """Install ``packages`` (each named like its command) with apt when they are missing (the
    machine runs as root)."""
    missing = [pkg for pkg in packages if _which(pkg) is None]
    if not missing:
        return
    install = ["apt-get", "install", "-y", "-q", *missing]
    if os.geteuid() != 0:
        install = ["sudo", *install]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(missing)}")
    setup.append(shlex.join(install))
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        update = ["apt-get", "update", "-q"] if os.geteuid() == 0 else ["sudo", "apt-get", "update"]
        subprocess.run(update, env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    still = [pkg for pkg in missing if _which(pkg) is None]
    if still:
        raise SystemExit(f"could not install {', '.join(still)}")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- servers


@dataclass
class _Server:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Servers(contextlib.AbstractContextManager["Servers"]):
    """Server processes pinned to the server CPU, each in its own process group, all stopped
    (SIGTERM, then SIGKILL) when the block exits, however it exits."""

    def __init__(self, log_dir: Path, commands: list[str]) -> None:
        self._log_dir = log_dir
        self._commands = commands
        self._servers: list[_Server] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        env: dict[str, str] | None = None,
        check_headers: dict[str, str] | None = None,
    ) -> str:
        """Start ``argv`` pinned to the server CPU and wait until ``GET /hello`` on ``port``
        answers 200; return the URL of ``/hello``."""
        ready = self.spawn(name, argv, port=port, env=env, check_headers=check_headers)
        return ready()

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        env: dict[str, str] | None = None,
        check_headers: dict[str, str] | None = None,
    ) -> Callable[[], str]:
        """Start ``argv`` as :meth:`start` does without waiting: the returned function waits
        until it is ready and returns the URL of ``/hello`` (servers start side by side)."""
        full = ["taskset", "-c", SERVER_CPU, *argv]
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        self._commands.append(f"{prefix}{shlex.join(full)} >/dev/null &")
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("wb") as stderr:
            process = subprocess.Popen(
                full,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        server = _Server(name, process, log_path)
        self._servers.append(server)

        def ready() -> str:
            _wait_ready(server, port, check_headers or {})
            return f"http://127.0.0.1:{port}{PATH}"

        return ready

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self._servers):
            _stop(server.process)
        self._servers.clear()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _wait_ready(server: _Server, port: int, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} during start-up:\n"
                f"{_log_tail(server.log_path)}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", PATH, headers=headers)
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
            if response.status == 200 and body == b"Hello, world!":
                return
            last = f"status {response.status}, body {body[:80]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} not ready on port {port} after {START_TIMEOUT:.0f} s ({last}):\n"
        f"{_log_tail(server.log_path)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# ---------------------------------------------------------------- quiet gate


def _cpu_times(cpus: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(busy, total)`` jiffies per CPU from /proc/stat."""
    times: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:] in cpus:
                values = [int(v) for v in fields]
                idle = values[3] + (values[4] if len(values) > 4 else 0)
                times[name[3:]] = (sum(values) - idle, sum(values))
    return times


def cpu_busy(cpus: Sequence[str] = (SERVER_CPU, LOAD_CPU), window: float = 0.5) -> float:
    """The highest busy fraction among ``cpus`` over ``window`` seconds."""
    before = _cpu_times(cpus)
    time.sleep(window)
    after = _cpu_times(cpus)
    busiest = 0.0
    for cpu, (busy, total) in after.items():
        busy0, total0 = before.get(cpu, (busy, total))
        if total > total0:
            busiest = max(busiest, (busy - busy0) / (total - total0))
    return busiest


class QuietGate:
    """Before each measured run, waits (within one budget for the whole benchmark) until the
    benchmark's CPUs are idle. Between runs our own servers are idle, so what keeps those CPUs
    busy is someone else's work, which would otherwise land on one target's runs only."""

    def __init__(self, budget: float, threshold: float = 0.10) -> None:
        self.budget = budget
        self.threshold = threshold
        self.waited = 0.0
        self.runs = 0
        self.noisy_starts = 0

    def wait(self) -> None:
        self.runs += 1
        started = time.monotonic()
        busy = cpu_busy()
        while busy > self.threshold and self.waited + time.monotonic() - started < self.budget:
            time.sleep(1.0)
            busy = cpu_busy()
        self.waited += time.monotonic() - started
        if busy > self.threshold:
            self.noisy_starts += 1
            log(f"starting with a CPU {busy:.0%} busy with other work")

    def summary(self) -> str:
        return (
            f"before each measured run, waited for CPUs {SERVER_CPU} and {LOAD_CPU} to be idle "
            f"(at most {self.budget:.0f} s in all; waited {self.waited:.0f} s); "
            f"{self.noisy_starts} of {self.runs} runs still started with other work above "
            f"{self.threshold:.0%} of a CPU"
        )


# ---------------------------------------------------------------- load


_LATENCY_LINE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(output: str) -> WrkRun:
    """The figures of ``wrk --latency`` output: Requests/sec, the 50% and 99% lines of the
    latency distribution, request count, non-2xx/3xx responses and socket errors."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    latency = {
        pct: float(value) * _UNIT_MS[unit] for pct, value, unit in _LATENCY_LINE.findall(output)
    }
    if "50" not in latency or "99" not in latency:
        raise ValueError(f"no latency distribution in wrk output (run with --latency):\n{output}")
    requests = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkRun(
        rps=float(rps.group(1)),
        p50_ms=latency["50"],
        p99_ms=latency["99"],
        requests=int(requests.group(1)) if requests else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk_argv(url: str, duration: int, headers: Sequence[str] = ()) -> list[str]:
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{duration}s",
        "--latency",
    ]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def run_wrk(url: str, duration: int, headers: Sequence[str] = ()) -> WrkRun:
    done = subprocess.run(
        wrk_argv(url, duration, headers),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def loadgen_argv(url: str, rate: float, duration: float, warmup: float) -> list[str]:
    return [
        "taskset",
        "-c",
        LOAD_CPU,
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--rate",
        f"{rate:g}",
        "--connections",
        str(LATENCY_CONNECTIONS),
        "--duration",
        f"{duration:g}",
        "--warmup",
        f"{warmup:g}",
    ]


def run_loadgen(url: str, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    done = subprocess.run(
        loadgen_argv(url, rate, duration, warmup),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=warmup + duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@dataclass
class _Target:
    key: str
    label: str
    url: str = ""
    headers: list[str] = field(default_factory=list)
    shown_headers: list[str] = field(default_factory=list)
    """``headers`` as printed in the report (secrets replaced by a shell variable)."""


def interleave(
    targets: Sequence[_Target],
    runs: int,
    measure: Callable[[_Target], Any],
    gate: QuietGate | None = None,
) -> dict[str, list[Any]]:
    """Run ``measure`` over the targets ``runs`` times in rotation: A, B, C, A, B, C, …"""
    results: dict[str, list[Any]] = {t.key: [] for t in targets}
    for round_number in range(runs):
        for target in targets:
            if gate is not None:
                gate.wait()
            log(f"round {round_number + 1}/{runs}: {target.label}")
            results[target.key].append(measure(target))
    return results


# ---------------------------------------------------------------- scenarios


def _uvicorn(factory: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def middleware_scenario(opts: Options, tmp: Path, report: Report) -> ThroughputScenario:
    commands: list[str] = []
    configs = {}
    for name, access_log in (("bastion.toml", True), ("bastion-no-access-log.toml", False)):
        path = tmp / name
        path.write_text(bastion_toml(tmp / f"{path.stem}.db", access_log=access_log))
        configs[name] = path
    report.configs["bastion.toml"] = configs["bastion.toml"].read_text()
    token = bearer_token()
    auth_header = f"Authorization: Bearer {token}"
    specs: list[tuple[ThroughputTarget, str, dict[str, str], list[str]]] = [
        (ThroughputTarget("starlette", "bare Starlette"), "bench.apps:starlette_app", {}, []),
        (
            ThroughputTarget(
                "bastion",
                "Bastion default",
                min_ratio=0.6,
                note="`Bastion(Settings()).wrap(starlette_app)`, access log on "
                "(stdout to /dev/null)",
            ),
            "bench.apps:bastion_app",
            {"BASTION_CONFIG": str(configs["bastion.toml"])},
            [],
        ),
        (
            ThroughputTarget(
                "bastion_quiet",
                "Bastion default, access log off",
                note="same, with `logging.access_log = false`",
            ),
            "bench.apps:bastion_app",
            {"BASTION_CONFIG": str(configs["bastion-no-access-log.toml"])},
            [],
        ),
        (
            ThroughputTarget(
                "typical",
                "typical hand-assembled stack",
                reference_ratio=0.085,
                note="FastAPI + slowapi limit on the route + CORSMiddleware + "
                "BaseHTTPMiddleware security headers + PyJWT HS256 bearer "
                "dependency (`bench/apps.py`)",
            ),
            "bench.apps:typical_app",
            {},
            [auth_header],
        ),
        (
            ThroughputTarget("fastapi", "bare FastAPI", reference_ratio=0.40),
            "bench.apps:fastapi_app",
            {},
            [],
        ),
    ]
    targets: list[_Target] = []
    with Servers(WORK / "logs", commands) as servers:
        for result, factory, env, headers in specs:
            port = free_port()
            log(f"starting {result.label} on port {port}")
            url = servers.start(
                result.key,
                _uvicorn(factory, port),
                port=port,
                env=env,
                check_headers=dict(_split(h) for h in headers),
            )
            shown = ["Authorization: Bearer $TOKEN" if h == auth_header else h for h in headers]
            targets.append(_Target(result.key, result.label, url, headers, shown))
        results = _throughput(opts, targets, commands)
    if any(t.shown_headers for t in targets):
        commands.insert(
            0, "TOKEN=$(python -c 'from bench.apps import bearer_token; print(bearer_token())')"
        )
    for result, *_ in specs:
        result.runs = results[result.key]
    return ThroughputScenario(
        key="middleware",
        title="Middleware mode",
        intro=(
            "One uvicorn process per app (httptools, uvloop, uvicorn's own access log off, log "
            "level warning) "
            f"pinned to CPU {SERVER_CPU}; wrk with 1 thread and {WRK_CONNECTIONS} connections "
            f"pinned to CPU {LOAD_CPU}. Every app answers `GET {PATH}` with `Hello, world!`. "
            "Ratios are to bare Starlette in this run."
        ),
        baseline="starlette",
        targets=[s[0] for s in specs],
        commands=commands,
        reference_baseline_rps=34000,
    )


def _split(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()


def _throughput(
    opts: Options, targets: Sequence[_Target], commands: list[str]
) -> dict[str, list[WrkRun]]:
    for target in targets:
        log(f"warm-up: {target.label}")
        run_wrk(target.url, opts.warmup, target.headers)
    for target in targets:
        commands.append(
            shlex.join(wrk_argv(target.url, opts.duration, target.shown_headers)).replace(
                "'Authorization: Bearer $TOKEN'", '"Authorization: Bearer $TOKEN"'
            )
        )
    return interleave(
        targets, opts.runs, lambda t: run_wrk(t.url, opts.duration, t.headers), opts.gate
    )


def nginx_conf(prefix: Path, listen: int, upstream: int) -> str:
    """A reverse proxy with one worker and a keep-alive upstream pool."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream demo {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@contextlib.contextmanager
def gateway_servers(tmp: Path, commands: list[str], report: Report) -> Iterator[dict[str, _Target]]:
    """The demo upstream, ``bastion serve`` and nginx in front of it, all on the server CPU."""
    up, gw, fl, ng = free_port(), free_port(), free_port(), free_port()
    config = tmp / "bastion-gateway.toml"
    config.write_text(bastion_toml(tmp / "gateway.db"))
    report.configs["bastion-gateway.toml"] = config.read_text()
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, ng, up))
    report.configs["nginx.conf"] = conf.read_text()
    bastion = str(Path(sys.executable).with_name("bastion"))
    with Servers(WORK / "logs", commands) as servers:
        log(f"starting the demo upstream on port {up}")
        direct = servers.start(
            "upstream", [sys.executable, "-m", "bastion.demo", "--port", str(up)], port=up
        )
        log(f"starting bastion serve on port {gw}")
        gateway = servers.start(
            "gateway",
            [
                bastion,
                "serve",
                "--config",
                str(config),
                "--upstream",
                f"http://127.0.0.1:{up}",
                "--port",
                str(gw),
            ],
            port=gw,
        )
        log(f"starting the gateway floor on port {fl}")
        floor = servers.start(
            "floor",
            [
                sys.executable,
                "-m",
                "bench.floor",
                "--config",
                str(config),
                "--upstream",
                f"http://127.0.0.1:{up}",
                "--port",
                str(fl),
            ],
            port=fl,
        )
        log(f"starting nginx on port {ng}")
        nginx = servers.start(
            "nginx",
            [
                _which("nginx") or "nginx",
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(conf),
                "-p",
                str(prefix),
                "-g",
                "daemon off;",
            ],
            port=ng,
        )
        yield {
            "direct": _Target("direct", "direct to the upstream", direct),
            "bastion": _Target("bastion", "through `bastion serve`", gateway),
            "floor": _Target("floor", "Bastion's server and proxy terminal, no stage", floor),
            "nginx": _Target("nginx", "through nginx", nginx),
        }


def gateway_scenario(
    opts: Options, targets: dict[str, _Target], start_commands: list[str]
) -> ThroughputScenario:
    commands = list(start_commands)
    order = [targets["direct"], targets["bastion"], targets["floor"], targets["nginx"]]
    results = _throughput(opts, order, commands)
    rows = [
        ThroughputTarget(
            "direct",
            targets["direct"].label,
            note="`python -m bastion.demo`, uvicorn, the `GET /hello` fast path",
        ),
        ThroughputTarget(
            "bastion",
            targets["bastion"].label,
            min_ratio=0.4,
            note="1 worker, default settings, access log on (stdout to /dev/null)",
        ),
        ThroughputTarget(
            "floor",
            targets["floor"].label,
            note=(
                "`python -m bench.floor`: the same server, upstream client and forwarder as "
                "`bastion serve`, every request handed straight to the proxy terminal: what the "
                "HTTP plumbing alone costs, the floor under any stage"
            ),
        ),
        ThroughputTarget(
            "nginx",
            targets["nginx"].label,
            reference_ratio=0.61,
            note="1 worker process, keep-alive upstream pool of 64, access log off",
        ),
    ]
    for row in rows:
        row.runs = results[row.key]
    return ThroughputScenario(
        key="gateway",
        title="Gateway (sidecar layout)",
        intro=(
            f"The demo upstream and the proxy in front of it share CPU {SERVER_CPU}, as a sidecar "
            f"shares its pod's core; wrk (1 thread, {WRK_CONNECTIONS} connections) runs on CPU "
            f"{LOAD_CPU}. Ratios are to the upstream measured directly in this run."
        ),
        baseline="direct",
        targets=rows,
        commands=commands,
    )


def latency_scenario(
    opts: Options, targets: dict[str, _Target], start_commands: list[str]
) -> LatencyScenario:
    commands = list(start_commands)
    order = [targets["direct"], targets["bastion"], targets["nginx"]]
    warmup = float(opts.warmup)
    for target in order:
        commands.append(
            shlex.join(loadgen_argv(target.url, opts.rate, opts.latency_duration, warmup))
        )
    results = interleave(
        order,
        opts.runs,
        lambda t: run_loadgen(t.url, opts.rate, opts.latency_duration, warmup),
        opts.gate,
    )
    return LatencyScenario(
        key="latency",
        title="Light-load latency",
        intro=(
            f"A fixed {opts.rate:,.0f} requests/s over {LATENCY_CONNECTIONS} keep-alive "
            f"connections for {opts.latency_duration:g} s (after {warmup:g} s unrecorded) per "
            f"run, from `bench/loadgen.py` pinned to CPU {LOAD_CPU}; same servers and pinning as "
            "the gateway scenario. Figures are medians over the rounds."
        ),
        baseline="direct",
        targets=[LatencyTarget(t.key, t.label, results[t.key]) for t in order],
        rate=opts.rate,
        connections=LATENCY_CONNECTIONS,
        duration=opts.latency_duration,
        goals={"bastion": {"p50": 0.5, "p99": 2.0}},
        commands=commands,
    )


def run_module(
    opts: Options,
    module: str,
    args: Sequence[str] = (),
    *,
    commands: list[str],
    cpus: str = SERVER_CPU,
    timeout: float = 900,
    takes_quick: bool = True,
) -> Any:
    """Run ``python -m module args`` pinned to ``cpus`` (with ``--quick`` in a quick run when
    the module ``takes_quick``), once the machine is quiet; its command goes to ``commands``,
    and its standard output is the JSON it returns. A failing module stops the benchmark."""
    argv = ["taskset", "-c", cpus, sys.executable, "-m", module, *args]
    if opts.quick and takes_quick:
        argv.append("--quick")
    commands.append(shlex.join(argv))
    opts.gate.wait()
    done = subprocess.run(
        argv, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


def micro_scenario(opts: Options, report: Report) -> MicroResult:
    # Its size comes as arguments, in a quick run too.
    args = ["--iterations", str(opts.micro_iterations), "--batches", str(opts.micro_batches)]
    found = run_module(opts, "bench.micro", args, commands=report.micro_commands, takes_quick=False)
    return MicroResult.from_json(found)


def auth_scenario(opts: Options, report: Report) -> AuthResult:
    """:mod:`bench.auth` in its own process. It may use both benchmark CPUs: the argon2id
    threads of a login run beside the event loop, as they do in a server."""
    cpus = f"{SERVER_CPU},{LOAD_CPU}"
    found = run_module(opts, "bench.auth", commands=report.auth_commands, cpus=cpus, timeout=600)
    return AuthResult.from_json(found)


# ---------------------------------------------------------------- rate limiting


RATELIMIT_DURATION = 3
"""Longest wrk run of the rate-limit scenario (seconds): it measures ten stacks, so its runs are
shorter than the other scenarios' to keep the whole scenario near two minutes."""
RATELIMIT_WARMUP = 1
_HARNESS_COMMANDS = frozenset({"info", "ping"})
"""Commands the harness itself sends to the benchmark's Redis (left out of the counts)."""


@dataclass
class _Redis:
    url: str
    port: int


@contextlib.contextmanager
def redis_server(tmp: Path, commands: list[str]) -> Iterator[_Redis]:
    """A throwaway redis-server (no persistence) pinned to the load generator's CPU, as a shared
    Redis would sit on another core than Bastion; in its own process group, stopped however the
    block exits."""
    port = free_port()
    directory = tmp / "redis"
    directory.mkdir(exist_ok=True)
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        _which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    commands.append(shlex.join(argv) + " >/dev/null &")
    log_path = WORK / "logs" / "redis.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited during start-up:\n{_log_tail(log_path)}")
            try:
                if _redis_command(port, b"PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not ready on port {port}")
            time.sleep(0.05)
        yield _Redis(f"redis://127.0.0.1:{port}/0", port)
    finally:
        _stop(process)


def _redis_command(port: int, *parts: bytes) -> bytes:
    """One command's whole reply, raw (a status line or one bulk string)."""
    command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            return data
        size = int(head[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            rest += chunk
        return rest[:size]


def redis_command_calls(port: int) -> dict[str, int]:
    """``INFO commandstats`` as command name → calls since the server started."""
    text = _redis_command(port, b"INFO", b"commandstats").decode()
    calls: dict[str, int] = {}
    for match in re.finditer(r"^cmdstat_([\w|]+):calls=(\d+)", text, re.MULTILINE):
        calls[match.group(1)] = int(match.group(2))
    return calls


def bastion_requests_served(url: str) -> int:
    """Sum of ``bastion_http_requests_total`` on the server of ``url`` (its metrics endpoint,
    open to loopback by default)."""
    port = int(url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/_bastion/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"metrics answered {response.status}")
    total = 0.0
    for line in body.splitlines():
        if line.startswith("bastion_http_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


def ratelimit_toml(database: Path, *, store: str, redis_url: str = "") -> str:
    """The rate-limit scenario's Bastion configuration: access log off, and rate limiting off
    (``store = "off"``) or the three policies of :data:`bench.ratelimit.POLICIES` counted in
    ``memory`` or ``redis``."""
    lines = [
        "[store]",
        f'database_url = "sqlite+aiosqlite:///{database}"',
    ]
    if redis_url:
        lines.append(f'redis_url = "{redis_url}"')
    lines += ["", "[logging]", "access_log = false", "", "[ratelimit]"]
    if store == "off":
        return "\n".join([*lines, "enabled = false"]) + "\n"
    lines.append(f'store = "{store}"')
    return "\n".join(lines) + "\n" + policy_toml()


def ratelimit_micro(opts: Options, section: RateLimitSection, redis: _Redis) -> None:
    """:mod:`bench.ratelimit` in its own process on the server CPU."""
    found = run_module(
        opts, "bench.ratelimit", ["--redis-url", redis.url], commands=section.micro_commands
    )
    section.micro = RateLimitResult.from_json(found)


def ratelimit_throughput(
    opts: Options, tmp: Path, report: Report, section: RateLimitSection, redis: _Redis
) -> None:
    commands = list(section.start_commands)
    configs: dict[str, Path] = {}
    for store in ("off", "memory", "redis"):
        path = configs[store] = tmp / f"bastion-ratelimit-{store}.toml"
        url = redis.url if store == "redis" else ""
        path.write_text(ratelimit_toml(tmp / f"ratelimit-{store}.db", store=store, redis_url=url))
    report.configs["bastion-ratelimit-redis.toml"] = configs["redis"].read_text()
    strategy, storage = "BENCH_LIMITS_STRATEGY", "BENCH_LIMITS_STORAGE"
    redis_uri = f"redis://127.0.0.1:{redis.port}"
    specs: list[tuple[ThroughputTarget, str, dict[str, str]]] = [
        (
            ThroughputTarget("starlette", "bare Starlette", note="no rate limiting: the baseline"),
            "bench.apps:starlette_app",
            {},
        ),
        (
            ThroughputTarget(
                "bastion_off",
                "Bastion, rate limiting off",
                note="`Bastion(Settings()).wrap(starlette_app)`, `ratelimit.enabled = false`, "
                "access log off",
            ),
            "bench.apps:bastion_app",
            {"BASTION_CONFIG": str(configs["off"])},
        ),
        (
            ThroughputTarget(
                "bastion_redis",
                "Bastion, 3 policies, Redis",
                note="the same with the three policies counted in Redis "
                "(`bastion-ratelimit-redis.toml` below)",
            ),
            "bench.apps:bastion_app",
            {"BASTION_CONFIG": str(configs["redis"])},
        ),
        (
            ThroughputTarget(
                "bastion_memory",
                "Bastion, 3 policies, memory",
                note='the same with `ratelimit.store = "memory"`',
            ),
            "bench.apps:bastion_app",
            {"BASTION_CONFIG": str(configs["memory"])},
        ),
    ]
    for algorithm in ("moving", "fixed"):
        for where, uri in (("memory", "memory://"), ("redis", redis_uri)):
            specs.append(
                (
                    ThroughputTarget(
                        f"limits_{algorithm}_{where}",
                        f"limits.aio {algorithm} window, {where}",
                        note="bare Starlette behind an ASGI middleware making three "
                        f"`{algorithm.capitalize()}WindowRateLimiter.hit` calls per request "
                        "(`bench/apps.py`)",
                    ),
                    "bench.apps:limits_app",
                    {strategy: f"{algorithm}-window", storage: uri},
                )
            )
    for where, uri in (("memory", "memory://"), ("redis", redis_uri)):
        specs.append(
            (
                ThroughputTarget(
                    f"slowapi_{where}",
                    f"slowapi, {where}",
                    note="bare Starlette, `@limiter.limit` with three limits on the route "
                    "(fixed window, synchronous storage)",
                ),
                "bench.apps:slowapi_app",
                {storage: uri},
            )
        )
    duration = min(opts.duration, RATELIMIT_DURATION)
    warmup = min(opts.warmup, RATELIMIT_WARMUP)
    targets: list[_Target] = []
    bastion_keys = {"bastion_off", "bastion_redis", "bastion_memory"}
    with Servers(WORK / "logs", commands) as servers:
        waiting = []
        for result, factory, env in specs:
            port = free_port()
            log(f"starting {result.label} on port {port}")
            waiting.append(
                (result, servers.spawn(result.key, _uvicorn(factory, port), port=port, env=env))
            )
        for result, ready in waiting:
            targets.append(_Target(result.key, result.label, ready()))
        for target in targets:
            log(f"warm-up: {target.label}")
            run_wrk(target.url, warmup)
        commands += [shlex.join(wrk_argv(t.url, duration)) for t in targets]
        commands.append(f"redis-cli -p {redis.port} INFO commandstats  # before and after each run")
        runs: dict[str, list[RedisRun]] = {t.key: [] for t in targets}

        def measure(target: _Target) -> WrkRun:
            bastion = target.key in bastion_keys
            served = bastion_requests_served(target.url) if bastion else 0
            before = redis_command_calls(redis.port)
            run = run_wrk(target.url, duration)
            after = redis_command_calls(redis.port)
            if bastion:
                served = bastion_requests_served(target.url) - served - 1  # the first scrape
            delta = {
                name: calls - before.get(name, 0)
                for name, calls in after.items()
                if name not in _HARNESS_COMMANDS
            }
            runs[target.key].append(
                RedisRun(
                    evalsha=delta.get("evalsha", 0),
                    commands=sum(delta.values()),
                    requests=run.requests,
                    served=max(served, 0),
                    by_command={k: v for k, v in delta.items() if v},
                )
            )
            return run

        results = interleave(targets, opts.runs, measure, opts.gate)
    for result, *_ in specs:
        result.runs = results[result.key]
    section.redis_runs = runs
    section.duration = duration
    section.warmup = warmup
    section.throughput = ThroughputScenario(
        key="ratelimit",
        title="Rate limiting under load",
        intro=(
            "One uvicorn process per stack (httptools, uvloop, access logs off) pinned to CPU "
            f"{SERVER_CPU}; wrk (1 thread, {WRK_CONNECTIONS} connections, one client address) "
            f"and a redis-server of the benchmark's own both pinned to CPU {LOAD_CPU}. Runs of "
            f"{duration} s after {warmup} s of warm-up, {opts.runs} interleaved round(s). "
            "No limit is ever reached: every request is counted and allowed."
        ),
        baseline="starlette",
        targets=[s[0] for s in specs],
        commands=commands,
    )


def ratelimit_scenario(opts: Options, tmp: Path, report: Report) -> None:
    section = report.ratelimit = RateLimitSection()
    with redis_server(tmp, section.start_commands) as redis:
        log("rate limiting in process")
        _attempt(report, "ratelimit (in process)", lambda: ratelimit_micro(opts, section, redis))
        log("rate limiting under load")
        _attempt(
            report,
            "ratelimit (throughput)",
            lambda: ratelimit_throughput(opts, tmp, report, section, redis),
        )


def cache_scenario(opts: Options, tmp: Path, report: Report) -> None:
    """:mod:`bench.cache` in its own process on the server CPU, against a Redis of its own."""
    with redis_server(tmp, report.cache_commands) as redis:
        log("tiered cache")
        found = run_module(
            opts,
            "bench.cache",
            ["--redis-url", redis.url],
            commands=report.cache_commands,
            timeout=1800,
        )
        report.cache = CacheResult.from_json(found)


def cache_http_throughput(opts: Options, tmp: Path) -> ThroughputScenario:
    """Bare Starlette, and the gateway with and without the response cache in front of one demo
    upstream (:mod:`bench.cache_http`); then a check that the cached gateway answered hits."""
    commands: list[str] = []
    rows = cache_http_rows()
    bastion = str(Path(sys.executable).with_name("bastion"))
    targets: list[_Target] = []
    with Servers(WORK / "logs", commands) as servers:
        port = free_port()
        log(f"starting bare Starlette on port {port}")
        url = servers.start("starlette", _uvicorn("bench.apps:starlette_app", port), port=port)
        targets.append(_Target("starlette", rows[0].label, url))
        up = free_port()
        log(f"starting the demo upstream on port {up}")
        servers.start(
            "cache-upstream", [sys.executable, "-m", "bastion.demo", "--port", str(up)], port=up
        )
        for row in rows[1:]:
            config = tmp / f"bastion-{row.key}.toml"
            config.write_text(
                cached_gateway_toml(tmp / f"{row.key}.db", cache=row.key == "cache_hit")
            )
            port = free_port()
            log(f"starting {row.label} on port {port}")
            argv = [bastion, "serve", "--config", str(config), "--upstream"]
            argv += [f"http://127.0.0.1:{up}", "--port", str(port)]
            url = servers.start(row.key, argv, port=port)
            targets.append(_Target(row.key, row.label, url.replace(PATH, CACHED_PATH)))
        if not _served_from_cache(targets[1].url):
            raise RuntimeError("the cached gateway asked the upstream for a cached response")
        results = _throughput(opts, targets, commands)
    for row in rows:
        row.runs = results[row.key]
    return cache_http_scenario(rows, commands, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU)


def _served_from_cache(url: str) -> bool:
    """Whether a second request to the demo's ``/cache/{n}`` through ``url`` was answered from
    the cache: the demo's own count (``X-Demo-Hits``) did not move."""
    parsed = urllib.parse.urlsplit(url)
    counts = []
    for _ in range(2):
        connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
        try:
            connection.request("GET", parsed.path)
            response = connection.getresponse()
            response.read()
            counts.append(response.getheader("x-demo-hits"))
        finally:
            connection.close()
    return counts[0] is not None and counts[0] == counts[1]


def audit_log_scenario(opts: Options, report: Report) -> None:
    """:mod:`bench.audit_log` in its own process on the server CPU; its throwaway PostgreSQL
    on the load generator's CPU, as a database server would be another machine."""
    found = run_module(
        opts,
        "bench.audit_log",
        ["--postgres-cpu", LOAD_CPU],
        commands=report.audit_log_commands,
        timeout=1800,
    )
    report.audit_log = AuditLogResult.from_json(found)


def audit_scenario(opts: Options, tmp: Path) -> ThroughputScenario:
    """The audited gateway with ``[audit]`` on and off in front of one demo upstream; then a
    check that the audited one recorded an event for every request wrk sent it."""
    commands: list[str] = []
    rows = audited_gateway_rows()
    bastion = str(Path(sys.executable).with_name("bastion"))
    databases = {row.key: tmp / f"{row.key}.db" for row in rows}
    targets: list[_Target] = []
    with Servers(WORK / "logs", commands) as servers:
        up = free_port()
        log(f"starting the demo upstream on port {up}")
        servers.start(
            "audit-upstream", [sys.executable, "-m", "bastion.demo", "--port", str(up)], port=up
        )
        for row in rows:
            config = tmp / f"bastion-{row.key}.toml"
            config.write_text(audited_toml(databases[row.key], audit=row.key == "audit_on"))
            port = free_port()
            log(f"starting {row.label} on port {port}")
            argv = [
                bastion,
                "serve",
                "--config",
                str(config),
                "--upstream",
                f"http://127.0.0.1:{up}",
            ]
            url = servers.start(row.key, [*argv, "--port", str(port)], port=port)
            targets.append(_Target(row.key, row.label, audited_url(url)))
        results = _throughput(opts, targets, commands)
    for row in rows:
        row.runs = results[row.key]
    sent = sum(run.requests for run in results["audit_on"])
    recorded = recorded_events(databases["audit_on"])
    if recorded < sent:
        raise RuntimeError(f"the audited gateway recorded {recorded} events for {sent} requests")
    return audited_gateway_scenario(rows, commands, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU)


# ---------------------------------------------------------------- report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" with uncommitted changes" if dirty.strip() else "")


def new_report(opts: Options) -> Report:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = {
        "CPU": _cpu_model(),
        "logical CPUs": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "wrk": _tool_version(["wrk", "-v"]),
        "nginx": _tool_version([_which("nginx") or "nginx", "-v"]),
        "load average at start": load,
        "load average at end": "",
        "source": _git_revision(),
    }
    sections = configured_sections()
    parameters = {
        "wrk run": f"{opts.duration} s, `-t1 -c{WRK_CONNECTIONS} --latency`",
        "warm-up per target": f"{opts.warmup} s",
        "rounds (interleaved)": str(opts.runs),
        "reported": f"median of the {opts.runs} rounds" if opts.runs > 1 else "single round",
        "fixed-rate run": f"{opts.rate:,.0f} req/s, {LATENCY_CONNECTIONS} connections, "
        f"{opts.latency_duration:g} s",
        "microbenchmark": f"{opts.micro_batches} batches of {opts.micro_iterations:,} requests",
        "identity (auth)": f"in process on CPUs {SERVER_CPU} and {LOAD_CPU}; "
        + ("`--quick` sizes" if opts.quick else "default sizes (`bench/auth.py`)"),
        "rate limiting": f"in process on CPU {SERVER_CPU}; wrk runs of "
        f"{min(opts.duration, RATELIMIT_DURATION)} s after "
        f"{min(opts.warmup, RATELIMIT_WARMUP)} s warm-up; Redis on CPU {LOAD_CPU}",
        "pinning": f"servers and upstreams CPU {SERVER_CPU}, load generators CPU {LOAD_CPU}",
        "Bastion settings": "defaults; SQLite store in a temp dir"
        + "".join(f"; {s}" for s in sections),
    }
    notes = []
    if not sections:
        notes.append(
            "Rate limiting is not part of this build of Bastion, so its cost is not included; "
            "once `[ratelimit]` exists the benchmark configures the built-in `global` policy "
            "in shadow mode (`bench/apps.py`)."
        )
    if opts.quick:
        notes.append("Quick smoke run: 1-second runs, one round. Not for comparison.")
    return Report(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine,
        versions=versions,
        parameters=parameters,
        notes=notes,
    )


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmark pins servers and load generators to CPUs 0 and 1")
    WORK.mkdir(exist_ok=True)
    (WORK / "logs").mkdir(exist_ok=True)
    setup: list[str] = []
    if {"middleware", "gateway", "latency"} & set(opts.only):
        ensure_tools(setup)
    if "ratelimit" in opts.only:
        ensure_tools(setup, ("wrk", "redis-server"))
    if "cache" in opts.only:
        ensure_tools(setup, ("redis-server",))
    if "audit" in opts.only or "cache_http" in opts.only:
        ensure_tools(setup, ("wrk",))
    report = new_report(opts)
    report.setup_commands = setup
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "middleware" in opts.only:
            _attempt(
                report,
                "middleware",
                lambda: report.throughput.append(middleware_scenario(opts, tmp, report)),
            )
        if "gateway" in opts.only or "latency" in opts.only:
            _attempt(report, "gateway", lambda: _gateway_and_latency(opts, tmp, report))
        if "micro" in opts.only:
            log("microbenchmark")

            def micro() -> None:
                report.micro = micro_scenario(opts, report)

            _attempt(report, "micro", micro)
        if "auth" in opts.only:
            log("identity (auth)")

            def auth() -> None:
                report.auth = auth_scenario(opts, report)

            _attempt(report, "auth", auth)
        if "ratelimit" in opts.only:
            _attempt(report, "ratelimit", lambda: ratelimit_scenario(opts, tmp, report))
        if "cache" in opts.only:
            _attempt(report, "cache", lambda: cache_scenario(opts, tmp, report))
        if "cache_http" in opts.only:
            log("HTTP response cache")
            _attempt(
                report,
                "cache_http",
                lambda: report.throughput.append(cache_http_throughput(opts, tmp)),
            )
        if "audit" in opts.only:
            log("audited gateway")
            _attempt(report, "audit", lambda: report.throughput.append(audit_scenario(opts, tmp)))
        if "audit_log" in opts.only:
            log("audit log throughput")
            _attempt(report, "audit_log", lambda: audit_log_scenario(opts, report))
    elapsed = time.monotonic() - started
    report.parameters["total time"] = f"{elapsed / 60:.1f} min"
    if opts.gate.budget > 0:
        report.parameters["quiet machine"] = opts.gate.summary()
    report.machine["load average at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    (WORK / "results.json").write_text(json.dumps(report.to_json(), indent=1))
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(render(report))
    log(f"wrote {opts.output} in {elapsed:.0f} s")
    return 1 if report.failures else 0


def _gateway_and_latency(opts: Options, tmp: Path, report: Report) -> None:
    start_commands: list[str] = []
    with gateway_servers(tmp, start_commands, report) as targets:
        if "gateway" in opts.only:
            _attempt(
                report,
                "gateway",
                lambda: report.throughput.append(gateway_scenario(opts, targets, start_commands)),
            )
        if "latency" in opts.only:
            log("fixed-rate latency")

            def latency() -> None:
                report.latency = latency_scenario(opts, targets, start_commands)

            _attempt(report, "latency", latency)


def _attempt(report: Report, name: str, action: Callable[[], None]) -> None:
    """Run one scenario; a failure is recorded in the report and the others still run."""
    try:
        action()
    except (RuntimeError, OSError, ValueError, ImportError, subprocess.SubprocessError) as exc:
        message = " ".join(str(exc).split())
        log(f"{name} failed: {exc}")
        report.failures[name] = message[:600]


if __name__ == "__main__":
    sys.exit(main())

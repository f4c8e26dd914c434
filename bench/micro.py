"""In-process microbenchmark: microseconds per request through Bastion's ASGI stages.

No network and no HTTP server: each case is an ASGI app called directly with a copy of a prebuilt
``GET /hello`` scope, a ``receive`` that returns an empty body and a ``send`` that drops messages.
The terminal is :func:`bench.apps.raw_hello`. Cases:

- the terminal alone, and the terminal with a fresh request state created per call (the baseline
  of stages that read the state the request-id stage normally creates);
- the full default pipeline (``Bastion(settings).wrap(terminal)``, stores started), with the
  access log on (written to /dev/null) and off;
- each stage alone around the terminal, constructed as :func:`bastion.engine.build_pipeline`
  constructs it; stages off by default get the smallest configuration that turns them on.

Each case runs ``iterations`` requests per batch; batches of all cases are interleaved so drift
hits every case alike, and the median batch is reported. A stage's cost is its median minus its
baseline's median.

``python -m bench.micro --iterations 20000 --batches 7`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bastion import Bastion, Settings
from bastion.deps import Deps
from bastion.engine import OwnRoutes
from bastion.http.asgi import ASGIApp, Message, Scope
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.alerts import AlertEngine
from bastion.observe.config import AlertsConfig, LoggingConfig, TracingConfig
from bastion.observe.logging import configure_logging
from bastion.pipeline.client_ip import ClientIpStage
from bastion.pipeline.compression import CompressionStage
from bastion.pipeline.cors import CorsStage
from bastion.pipeline.csrf import CsrfKeyRing, CsrfStage
from bastion.pipeline.errors import ErrorStage
from bastion.pipeline.headers import SecurityHeadersStage
from bastion.pipeline.limits import LimitsStage
from bastion.pipeline.probes import ProbeStage
from bastion.pipeline.request_id import RequestIdStage
from bastion.pipeline.shedding import SheddingStage
from bench.apps import PATH, bastion_toml, raw_hello

__all__ = [
    "MicroCase",
    "MicroResult",
    "StatusSink",
    "access_log_to_devnull",
    "empty_body",
    "pipeline_chain",
    "request_scope",
    "run_batch",
    "run_micro",
]

_REQUEST_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"curl/8.5.0"),
    (b"accept", b"*/*"),
]
"""What a plain API client (curl) sends: no ``Origin``, cookies or ``Accept-Encoding``."""

TERMINAL = "terminal"
TERMINAL_STATE = "terminal + state"


def request_scope() -> dict[str, Any]:
    """The ``GET /hello`` HTTP scope every case copies per request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 54321),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": list(_REQUEST_HEADERS),
    }


@dataclass
class MicroCase:
    """One measured case: ``ns_batches`` holds the nanoseconds per request of every batch."""

    name: str
    group: str
    """``baseline``, ``pipeline`` or ``stage``."""
    baseline: str | None
    """The case whose median is subtracted to give this case's own cost."""
    config: str = ""
    """What was configured to put the stage in the chain, when it is off by default."""
    ns_batches: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.ns_batches)


@dataclass
class MicroResult:
    iterations: int
    batches: int
    cases: list[MicroCase]
    chain: list[str] = field(default_factory=list)
    """Class names of the default pipeline, outermost first, as the engine built it."""

    def case(self, name: str) -> MicroCase:
        for item in self.cases:
            if item.name == name:
                return item
        raise KeyError(name)

    def net_us(self, name: str) -> float:
        """Microseconds per request that ``name`` adds to its baseline."""
        case = self.case(name)
        base = self.case(case.baseline).median_ns if case.baseline else 0.0
        return (case.median_ns - base) / 1000.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for item, case in zip(data["cases"], self.cases, strict=True):
            item["median_ns"] = case.median_ns
            item["net_us"] = self.net_us(case.name)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MicroResult:
        fields = ("name", "group", "baseline", "config", "ns_batches")
        cases = [MicroCase(**{k: c[k] for k in fields}) for c in data["cases"]]
        return cls(
            iterations=data["iterations"],
            batches=data["batches"],
            cases=cases,
            chain=list(data.get("chain", [])),
        )


async def empty_body() -> Message:
    """``receive`` of a request without a body."""
    return {"type": "http.request", "body": b"", "more_body": False}


class StatusSink:
    """``send`` that keeps the last response status, to check each case answers 200."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


ScopeFactory = Callable[[], Scope]


def _plain_scopes(template: dict[str, Any]) -> ScopeFactory:
    copy = template.copy
    return lambda: copy()


def _scopes_with_state(template: dict[str, Any]) -> ScopeFactory:
    copy = template.copy
    perf_counter = time.perf_counter

    def make() -> Scope:
        scope = copy()
        scope["state"] = {"bastion": RequestState("0" * 32, perf_counter(), "127.0.0.1", "http")}
        return scope

    return make


def pipeline_chain(app: Any) -> list[str]:
    """Class names from ``app`` inwards, following each stage's ``app`` attribute."""
    names: list[str] = []
    current = getattr(app, "pipeline", app)
    while current is not None and hasattr(current, "app"):
        names.append(type(current).__name__)
        current = current.app
    return names


async def run_batch(app: ASGIApp, scopes: ScopeFactory, send: StatusSink, iterations: int) -> float:
    """Nanoseconds per request of ``iterations`` requests, one after the other."""
    receive = empty_body
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await app(scopes(), receive, send)
    return (time.perf_counter_ns() - start) / iterations


def _stage_cases(
    deps: Deps, deps_on: Deps, terminal: ASGIApp
) -> list[tuple[str, str, ASGIApp, str]]:
    """``(name, config, app, baseline)`` for each stage alone around ``terminal``."""
    s, on = deps.settings, deps_on.settings
    metrics = deps.metrics

    async def ready() -> dict[str, dict[str, Any]]:
        return {}

    def request_id(access_log: bool) -> ASGIApp:
        observer = RequestObserver(metrics, access_log=access_log)
        return RequestIdStage(terminal, config=s.request_id, deps=deps, observer=observer)

    def request_id_alerts() -> ASGIApp:
        alerts = AlertEngine(AlertsConfig(enabled=True), metrics, routes=deps.routes)
        observer = alerts.observer(metrics, access_log=False)
        return RequestIdStage(terminal, config=s.request_id, deps=deps, observer=observer)

    def traced() -> ASGIApp:
        # Imported here, as the engine does: the SDK loads only when tracing is measured.
        from bastion.observe.tracing import Tracing

        tracing = Tracing(TracingConfig(enabled=True, exporter="none"))
        return tracing.server_stage(request_id(False), deps)

    keyring = CsrfKeyRing([b"bench-csrf-secret-0123456789abcdef"])
    return [
        ("request_id (access log on)", "", request_id(True), TERMINAL),
        ("request_id (access log off)", "logging.access_log = false", request_id(False), TERMINAL),
        (
            "request_id (alerts on, access log off)",
            "alerts.enabled = true (built-in rules), logging.access_log = false",
            request_id_alerts(),
            TERMINAL,
        ),
        (
            "tracing (server span, nothing exported)",
            'tracing.enabled = true, exporter = "none" (around request_id, access log off)',
            traced(),
            "request_id (access log off)",
        ),
        (
            "headers",
            "",
            SecurityHeadersStage(terminal, config=s.headers, deps=deps),
            TERMINAL_STATE,
        ),
        ("errors", "", ErrorStage(terminal, deps=deps), TERMINAL_STATE),
        (
            "client_ip",
            'client_ip.trusted_proxies = ["127.0.0.0/8"]',
            ClientIpStage(terminal, config=on.client_ip, deps=deps_on),
            TERMINAL_STATE,
        ),
        (
            "probes",
            "",
            ProbeStage(terminal, config=s.metrics, deps=deps, readiness=ready),
            TERMINAL_STATE,
        ),
        ("shedding", "", SheddingStage(terminal, config=s.shedding, deps=deps), TERMINAL_STATE),
        ("limits", "", LimitsStage(terminal, config=s.limits, deps=deps), TERMINAL_STATE),
        (
            "cors",
            'cors.origins = ["https://app.example.com"] (request without Origin)',
            CorsStage(terminal, config=on.cors, deps=deps_on),
            TERMINAL_STATE,
        ),
        (
            "csrf",
            "csrf.enabled = true (GET without session cookie)",
            CsrfStage(terminal, config=on.csrf, deps=deps_on, keyring=keyring),
            TERMINAL_STATE,
        ),
        (
            "compression",
            "",
            CompressionStage(terminal, config=s.compression, deps=deps),
            TERMINAL_STATE,
        ),
        ("own routes", "", OwnRoutes(terminal, prefix=deps.prefix), TERMINAL_STATE),
    ]


def _enabled_settings(base: Settings) -> Settings:
    """``base`` with the stages that are off by default turned on, minimally."""
    return base.with_updates(
        client_ip={"trusted_proxies": ["127.0.0.0/8"]},
        cors={"origins": ["https://app.example.com"]},
        csrf={"enabled": True, "secrets": ["bench-csrf-secret-0123456789abcdef"]},
    )


def _write_config(directory: Path, access_log: bool) -> Settings:
    name = "on" if access_log else "off"
    path = directory / f"bastion-{name}.toml"
    path.write_text(bastion_toml(directory / f"bastion-{name}.db", access_log=access_log))
    return Settings.from_file(path)


async def _measure(
    iterations: int, batches: int, directory: Path, progress: Callable[[str], None] | None
) -> MicroResult:
    template = request_scope()
    plain = _plain_scopes(template)
    with_state = _scopes_with_state(template)
    terminal: ASGIApp = raw_hello

    engines = {flag: Bastion(_write_config(directory, flag)) for flag in (True, False)}
    settings_on = _enabled_settings(engines[True].settings)
    deps_on = Bastion(settings_on).deps
    deps = engines[True].deps

    runs: list[tuple[MicroCase, ASGIApp, ScopeFactory]] = [
        (MicroCase(TERMINAL, "baseline", None), terminal, plain),
        (MicroCase(TERMINAL_STATE, "baseline", None), terminal, with_state),
    ]
    chain: list[str] = []
    for flag, engine in engines.items():
        await engine.startup()
        label = "full default pipeline" + ("" if flag else " (access log off)")
        config = "" if flag else "logging.access_log = false"
        wrapped = engine.wrap(terminal)
        chain = chain or pipeline_chain(wrapped)
        runs.append((MicroCase(label, "pipeline", TERMINAL, config), wrapped, plain))
    for name, config, app, baseline in _stage_cases(deps, deps_on, terminal):
        scopes = plain if baseline == TERMINAL else with_state
        runs.append((MicroCase(name, "stage", baseline, config), app, scopes))

    try:
        for case, app, scopes in runs:
            sink = StatusSink()
            await run_batch(app, scopes, sink, max(1, iterations // 10))  # warm-up
            if sink.status != 200:
                raise RuntimeError(f"{case.name}: answered {sink.status}, expected 200")
        for index in range(batches):
            if progress is not None:
                progress(f"batch {index + 1}/{batches}")
            for case, app, scopes in runs:
                gc.collect()
                case.ns_batches.append(await run_batch(app, scopes, StatusSink(), iterations))
    finally:
        for engine in engines.values():
            await engine.shutdown()
    cases = [c for c, _, _ in runs]
    return MicroResult(iterations=iterations, batches=batches, cases=cases, chain=chain)


def run_micro(
    *, iterations: int, batches: int, progress: Callable[[str], None] | None = None
) -> MicroResult:
    """Measure every case (``iterations`` requests per batch, ``batches`` batches each)."""
    if iterations < 1 or batches < 1:
        raise ValueError("iterations and batches must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bastion-micro-") as tmp:
        return asyncio.run(_measure(iterations, batches, Path(tmp), progress))


@contextmanager
def access_log_to_devnull() -> Iterator[None]:
    """Configure Bastion's JSON logging with standard output pointed at /dev/null, as the
    servers of the other scenarios run, so the access-log line is rendered and written."""
    with open(os.devnull, "w") as sink:
        saved = sys.stdout
        sys.stdout = sink
        try:
            configure_logging(LoggingConfig())
        finally:
            sys.stdout = saved
        yield


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20000, help="requests per batch")
    parser.add_argument("--batches", type=int, default=7, help="batches per case")
    args = parser.parse_args(argv)
    with access_log_to_devnull():
        result = run_micro(
            iterations=args.iterations,
            batches=args.batches,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

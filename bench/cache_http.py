"""The HTTP response cache under load: a cacheable upstream endpoint answered from the cache,
against a bare Starlette endpoint returning a constant.

``bastion serve`` (the benchmark's default configuration plus ``[cache.http] enabled = true``)
sits in front of the demo upstream, whose ``GET /cache/1`` is ``public, max-age=60`` with an
``ETag``: after the first request every one is a hit, answered by the cache stage without the
upstream, through the whole default pipeline (request id, security headers, rate limit in shadow
mode, inspection, compression negotiation). The same gateway without the cache shows what a hit
saves. The baseline is bare Starlette on uvicorn answering ``GET /hello`` with a constant.

:func:`bench.run.cache_http_scenario` starts the servers and runs wrk; this module holds what
defines the scenario: the configurations, the rows and the target.
"""

from __future__ import annotations

from pathlib import Path

from bench.apps import bastion_toml
from bench.report import ThroughputScenario, ThroughputTarget

__all__ = [
    "CACHED_PATH",
    "HIT_MIN_RATIO",
    "cache_http_rows",
    "cache_http_scenario",
    "cached_gateway_toml",
]

HIT_MIN_RATIO = 0.8
"""A response cache hit must keep this share of bare Starlette's requests per second."""
CACHED_PATH = "/cache/1"
"""The demo's cacheable endpoint (``public, max-age=60``, strong ``ETag``)."""


def cached_gateway_toml(database: Path, *, cache: bool) -> str:
    """The gateway configuration of :func:`bench.apps.bastion_toml` with the response cache on
    or off."""
    return bastion_toml(database) + f"\n[cache.http]\nenabled = {'true' if cache else 'false'}\n"


def cache_http_rows() -> list[ThroughputTarget]:
    """The rows: the Starlette baseline first."""
    return [
        ThroughputTarget(
            "starlette",
            "bare Starlette, constant",
            note="`bench.apps:starlette_app` on uvicorn, `GET /hello`",
        ),
        ThroughputTarget(
            "cache_hit",
            "gateway, response cache hit",
            min_ratio=HIT_MIN_RATIO,
            note=f"`bastion serve` with `[cache.http] enabled = true`, `GET {CACHED_PATH}` "
            "answered from the cache (access log on, stdout to /dev/null)",
        ),
        ThroughputTarget(
            "cache_off",
            "gateway, no cache",
            note=f"the same gateway without the cache: every `GET {CACHED_PATH}` goes to the "
            "demo upstream",
        ),
    ]


def cache_http_scenario(
    rows: list[ThroughputTarget], commands: list[str], *, server_cpu: str, load_cpu: str
) -> ThroughputScenario:
    """The report section of the measured ``rows``."""
    return ThroughputScenario(
        key="cache_http",
        title="HTTP response cache",
        intro=(
            f"Bare Starlette, the demo upstream and two `bastion serve` gateways (response cache "
            f"on and off) share CPU {server_cpu}; wrk (1 thread, 64 connections) runs on CPU "
            f"{load_cpu}. Through the gateway with the cache, every request after the first is "
            "a hit: the whole default pipeline runs, the upstream does not. Ratios are to bare "
            "Starlette returning a constant in this run."
        ),
        baseline="starlette",
        targets=rows,
        commands=commands,
    )

"""Plumbing of the rate-limit scenario: a tiny in-process run produces every figure, survives
the JSON round trip and renders its section and targets. Nothing here asserts timings."""

from __future__ import annotations

import math
from pathlib import Path

from bench import ratelimit, report, run

TINY = ratelimit.RateLimitParams(
    store_iterations=5, iterations=5, batches=2, redis_calls=4, redis_callers=2
)


def _throughput() -> report.ThroughputScenario:
    keys = [
        "starlette",
        "bastion_off",
        "bastion_redis",
        "bastion_memory",
        "limits_moving_redis",
        "slowapi_memory",
    ]
    return report.ThroughputScenario(
        key="ratelimit",
        title="Rate limiting under load",
        intro="intro",
        baseline="starlette",
        targets=[
            report.ThroughputTarget(key, key.replace("_", " "), [report.WrkRun(rps, 1, 2)])
            for key, rps in zip(keys, (1000, 800, 600, 700, 300, 400), strict=True)
        ],
        commands=["wrk ..."],
    )


def test_ratelimit_in_process_measures_renders_and_round_trips() -> None:
    result = ratelimit.run_ratelimit(TINY)

    names = [case.name for case in result.store]
    assert names[0] == ratelimit.NOOP
    for name in (ratelimit.GCRA_1, ratelimit.GCRA_3, "sliding_log, 1 check", "quota, 1 check"):
        assert name in names
    assert all(len(case.ns_batches) == TINY.batches for case in result.store)
    assert result.store_case(ratelimit.GCRA_3).checks == 3
    assert math.isfinite(result.pipeline.net_us(ratelimit.RL_ON))
    assert "GateStage" in result.pipeline.chain
    assert all(len(piece.ns_batches) == TINY.batches for piece in result.breakdown)
    assert result.redis == []

    again = ratelimit.RateLimitResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()

    section = report.RateLimitSection(micro=again, throughput=_throughput())
    section.redis_runs["bastion_redis"] = [report.RedisRun(10, 80, 9, served=10)]
    section.redis_runs["limits_moving_redis"] = [report.RedisRun(30, 150, 10)]
    page = report.Report("d", {}, {}, {}, ratelimit=section)
    text = report.render(page)
    assert "## 1. Rate limiting" in text
    assert "## Targets at a glance" in text
    assert "one GCRA decision per policy" in text
    assert "rate-limit stages, 3 policies, memory" in text
    assert "EVALSHA calls over requests served" in text
    row = next(line for line in text.splitlines() if line.startswith("| bastion redis |"))
    assert f"0.75{report.TIMES}" in row  # 600 / 800 of the same pipeline without rate limiting
    assert "1.000 / 8.000" in row  # per request served, not per wrk request
    assert "**yes**" in row
    row = next(line for line in text.splitlines() if line.startswith("| limits moving redis |"))
    assert f"0.30{report.TIMES}" in row
    assert "3.000 / 15.000" in row
    assert report.render(report.Report.from_json(page.to_json())) == text


def test_ratelimit_is_a_scenario_with_a_valid_configuration(tmp_path: Path) -> None:
    from bastion import Settings

    assert "ratelimit" in run.SCENARIOS
    assert run.parse_options(["--only", "ratelimit", "--quick"]).only == ("ratelimit",)
    for store in ("off", "memory", "redis"):
        path = tmp_path / f"{store}.toml"
        url = "redis://127.0.0.1:1/0" if store == "redis" else ""
        path.write_text(run.ratelimit_toml(tmp_path / "x.db", store=store, redis_url=url))
        settings = Settings.from_file(path)
        assert settings.ratelimit.enabled is (store != "off")
        if store != "off":
            assert settings.ratelimit.store == store
            names = [p.name for p in settings.ratelimit.effective_policies()]
            assert names == [p["name"] for p in ratelimit.POLICIES]

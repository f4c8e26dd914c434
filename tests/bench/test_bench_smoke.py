"""Smoke tests of the benchmark harness: the modules import, the microbenchmark runs a few
iterations, and the report renders synthetic numbers correctly. Nothing here asserts timings."""

from __future__ import annotations

import math

import pytest

from bench import apps, loadgen, micro, report, run

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8000/hello
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.85ms  310.12us   9.00ms   90.00%
    Req/Sec    34.10k     1.20k   36.00k    80.00%
  Latency Distribution
     50%    1.80ms
     75%    1.95ms
     90%    2.10ms
     99%  850.00us
  169886 requests in 5.00s, 22.68MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  33977.20
Transfer/sec:      4.54MB
"""


def test_parse_wrk_reads_rps_percentiles_and_errors() -> None:
    parsed = run.parse_wrk(WRK_OUTPUT)
    assert parsed.rps == pytest.approx(33977.20)
    assert parsed.p50_ms == pytest.approx(1.80)
    assert parsed.p99_ms == pytest.approx(0.85)
    assert parsed.requests == 169886
    assert parsed.non_2xx == 3
    assert parsed.socket_errors == 3


def test_parse_wrk_requires_the_latency_distribution() -> None:
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%  " not in line)
    with pytest.raises(ValueError, match="latency"):
        run.parse_wrk(without.replace("50%", "").replace("99%", ""))


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile(values, 100) == 100
    assert math.isnan(loadgen.percentile([], 50))
    assert loadgen.summarize([0.001, 0.002])["max"] == pytest.approx(2.0)


def test_bastion_config_is_valid_settings(tmp_path) -> None:
    from bastion import Settings

    path = tmp_path / "bastion.toml"
    path.write_text(apps.bastion_toml(tmp_path / "bench.db", access_log=False))
    settings = Settings.from_file(path)
    assert settings.logging.access_log is False
    assert settings.store.database_url.endswith("bench.db")


def test_microbenchmark_runs_every_case() -> None:
    result = micro.run_micro(iterations=5, batches=2)
    names = [case.name for case in result.cases]
    assert names[:2] == [micro.TERMINAL, micro.TERMINAL_STATE]
    for stage in ("request_id (access log on)", "headers", "limits", "cors", "csrf", "compression"):
        assert stage in names
    assert sum(case.group == "pipeline" for case in result.cases) == 2
    assert all(len(case.ns_batches) == 2 for case in result.cases)
    assert result.chain[0] == "RequestIdStage"
    again = micro.MicroResult.from_json(result.to_json())
    assert [c.name for c in again.cases] == names
    assert again.chain == result.chain
    rendered = report.render(_report(micro_result=again))
    assert "| headers |" in rendered


def _throughput() -> report.ThroughputScenario:
    return report.ThroughputScenario(
        key="middleware",
        title="Middleware mode",
        intro="intro",
        baseline="base",
        targets=[
            report.ThroughputTarget(
                "base",
                "bare",
                [report.WrkRun(100, 1, 2), report.WrkRun(300, 1, 2), report.WrkRun(200, 1, 2)],
            ),
            report.ThroughputTarget(
                "fast", "fast layer", [report.WrkRun(150, 2, 3)] * 3, min_ratio=0.6
            ),
            report.ThroughputTarget(
                "slow", "slow layer", [report.WrkRun(50, 2, 3)] * 3, min_ratio=0.4
            ),
            report.ThroughputTarget(
                "ref", "other", [report.WrkRun(20, 9, 9)] * 3, reference_ratio=0.085
            ),
        ],
        commands=["wrk ..."],
    )


def _latency() -> report.LatencyScenario:
    def runs(p50: float, p99: float) -> list[dict[str, object]]:
        summary = {"p50": p50, "p90": p50, "p99": p99, "p999": p99, "max": p99}
        lag = {"p50": 0.001, "p90": 0.001, "p99": 0.002, "p999": 0.002, "max": 0.003}
        return [{"latency_ms": summary, "lag_ms": lag, "errors": 0, "non_2xx": 0}] * 3

    return report.LatencyScenario(
        key="latency",
        title="Light-load latency",
        intro="intro",
        baseline="direct",
        targets=[
            report.LatencyTarget("direct", "direct", runs(0.1, 0.5)),
            report.LatencyTarget("bastion", "gateway", runs(0.4, 3.0)),
        ],
        rate=1000,
        connections=16,
        duration=5,
        goals={"bastion": {"p50": 0.5, "p99": 2.0}},
    )


def _report(micro_result: micro.MicroResult | None = None) -> report.Report:
    return report.Report(
        date="2025-01-01 00:00 UTC",
        machine={"CPU": "test CPU", "logical CPUs": "2"},
        versions={"uvicorn": "0"},
        parameters={"wrk run": "5 s"},
        throughput=[_throughput()],
        latency=_latency(),
        micro=micro_result,
        configs={"bastion.toml": "[store]\n", "nginx.conf": "events {}\n"},
    )


def test_ratios_use_medians_of_the_runs() -> None:
    scenario = _throughput()
    assert scenario.target("base").rps == 200
    assert scenario.ratio_of("fast") == pytest.approx(0.75)
    assert scenario.ratio_of("slow") == pytest.approx(0.25)
    assert math.isnan(report.ratio(1.0, 0.0))


def test_report_tables_and_verdicts() -> None:
    text = report.render(_report())
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| fast layer |"))
    assert f"0.75{report.TIMES}" in row
    assert f"≥ 0.60{report.TIMES}" in row
    assert "**yes**" in row
    row = next(line for line in lines if line.startswith("| slow layer |"))
    assert f"0.25{report.TIMES}" in row
    assert "**no**" in row
    row = next(line for line in lines if line.startswith("| other |"))
    assert f"reference 0.085{report.TIMES}" in row
    assert "## Targets at a glance" in text
    assert "| CPU | test CPU |" in text
    # Added latency: 0.4 - 0.1 = 0.3 ms at p50 (met), 3.0 - 0.5 = 2.5 ms at p99 (missed).
    assert report.added_latency(_latency(), "bastion", "p50") == pytest.approx(0.3)
    p50 = next(line for line in lines if line.startswith("| gateway, added p50 |"))
    assert "**yes**" in p50
    p99 = next(line for line in lines if line.startswith("| gateway, added p99 |"))
    assert "2.50 ms" in p99
    assert "**no**" in p99
    assert "```nginx" in text
    assert "```toml" in text


def test_failed_requests_fail_the_goal() -> None:
    scenario = _throughput()
    scenario.target("fast").runs = [report.WrkRun(150, 2, 3, non_2xx=5)] * 3
    text = report.render(report.Report("d", {}, {}, {}, throughput=[scenario]))
    row = next(line for line in text.splitlines() if line.startswith("| fast layer ⚠"))
    assert "15 failed" in row
    assert "**no**" in row


def test_report_round_trips_through_json() -> None:
    original = _report()
    again = report.Report.from_json(original.to_json())
    assert report.render(again) == report.render(original)


def test_options_scenarios_and_output() -> None:
    quick = run.parse_options(["--quick", "--only", "micro"])
    assert quick.only == ("micro",)
    assert quick.output.name == "benchmarks.md"
    assert quick.output.parent.name == ".bench"
    full = run.parse_options([])
    assert full.only == run.SCENARIOS
    assert full.output == run.DOC


def test_pipeline_chain_follows_the_stages() -> None:
    class Inner:
        app = None

    class Outer:
        def __init__(self) -> None:
            self.app = Inner()

    assert micro.pipeline_chain(Outer()) == ["Outer", "Inner"]


def test_widely_spread_runs_are_flagged() -> None:
    scenario = _throughput()
    assert report.run_spread(scenario.target("base")) == pytest.approx(1.0)
    assert report.run_spread(scenario.target("fast")) == 0
    text = report.render(report.Report("d", {}, {}, {}, throughput=[scenario]))
    flagged = [line for line in text.splitlines() if line.startswith("- ⚠ The runs of")]
    assert len(flagged) == 1
    assert "bare differ by 100%" in flagged[0]


def test_quiet_gate_gives_up_within_its_budget() -> None:
    gate = run.QuietGate(budget=0.0, threshold=-1.0)
    gate.wait()
    assert gate.runs == 1
    assert gate.noisy_starts == 1
    assert "1 of 1 runs" in gate.summary()

"""Plumbing of the identity scenario: a tiny run produces every figure, survives the JSON
round trip and renders its section. Nothing here asserts timings."""

from __future__ import annotations

import math

from bench import auth, report, run

TINY = auth.AuthParams(
    iterations=5,
    batches=2,
    first_sight_iterations=3,
    verify_iterations=3,
    logins=2,
    argon2_runs=1,
    stall_seconds=0.05,
    concurrency=2,
    probe_interval_ms=5.0,
)


def test_identity_scenario_measures_renders_and_round_trips() -> None:
    result = auth.run_auth(TINY)

    names = [case.name for case in result.requests.cases]
    for name in (
        auth.AUTH_OFF,
        auth.AUTH_IDLE,
        auth.CACHED_BEARER,
        auth.CACHED_KEY,
        auth.FIRST_SIGHT.format(alg="HS256"),
        auth.FIRST_SIGHT.format(alg="EdDSA"),
    ):
        assert name in names
    assert all(len(case.ns_batches) == TINY.batches for case in result.requests.cases)
    assert math.isfinite(result.requests.net_us(auth.CACHED_BEARER))
    assert "AuthStage" in result.requests.chain
    assert [case.algorithm for case in result.verify] == ["HS256", "EdDSA"]
    assert all(case.bastion_us > 0 and case.pyjwt_us > 0 for case in result.verify)
    assert len(result.login.login_ms) == TINY.logins
    assert len(result.login.argon2_ms) == TINY.argon2_runs
    assert set(result.stall.phases) == {"idle", "logins", "threads", "on_loop"}
    assert all(phase["count"] > 0 for phase in result.stall.phases.values())
    assert set(result.stall.logins) == {"200"}

    again = auth.AuthResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()

    page = report.Report("d", {}, {}, {}, auth=again, auth_commands=["python -m bench.auth"])
    text = report.render(page)
    assert "## 1. Identity (auth)" in text
    assert "## Targets at a glance" in text
    assert "authenticated request with a cached access token" in text
    assert f"| {auth.CACHED_BEARER} |" in text
    assert "| HS256 |" in text
    assert "argon2id verify alone" in text
    assert "*Unaffected* means" in text
    assert report.render(report.Report.from_json(page.to_json())) == text


def test_auth_is_a_scenario_of_its_own() -> None:
    assert "auth" in run.SCENARIOS
    assert run.parse_options(["--only", "auth", "--quick"]).only == ("auth",)

"""Plumbing of the cache scenario: a tiny run (with the test Redis) produces every figure,
survives the JSON round trip and renders its section and targets. Nothing here asserts
timings."""

from __future__ import annotations

import json

from bench import cache, report, run

TINY = cache.CacheParams(
    iterations=20,
    redis_iterations=5,
    rounds=2,
    invalidations=5,
    zipf_keys=2000,
    zipf_capacity=200,
    zipf_accesses=4000,
    keys=20,
)


async def test_cache_scenario_measures_renders_and_round_trips(clean_redis_url: str) -> None:
    result = await cache.run_cache(TINY, clean_redis_url, quick=True)
    names = {case.name for case in result.hits}
    assert {"get, L1 hit", "get_or_set, L1 hit (tiered)", "get_or_set, L2 hit (L1 off)"} <= names
    assert {"cashews mem:// get", "cashews redis:// get"} <= names
    assert all(case.us > 0 for case in result.hits)
    assert result.redis_rtt_us is not None
    assert result.l2_commands_per_hit is not None
    assert result.invalidation_ms["samples"] > 0
    rates = result.hit_rates
    assert set(rates) == {"W-TinyLFU (bastion L1)", "LRU", "oracle (top 10%)"}
    assert all(0.0 <= rate <= 1.0 for rate in rates.values())

    back = cache.CacheResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result
    page = report.Report(date="d", machine={}, versions={}, parameters={}, cache=back)
    text = report.render(report.Report.from_json(page.to_json()))
    assert "Tiered cache" in text
    assert "W-TinyLFU (bastion L1)" in text
    assert "L1 hit rate" in text
    assert "cache" in run.SCENARIOS


async def test_cache_scenario_without_redis_skips_the_redis_cases() -> None:
    result = await cache.run_cache(TINY)
    names = {case.name for case in result.hits}
    assert "get, L1 hit" in names
    assert not any("L2" in name or "redis" in name for name in names)
    assert result.redis_rtt_us is None
    assert result.l2_commands_per_hit is None
    assert result.invalidation_ms == {}
    goals = cache.cache_goals(result)
    assert [row[0].split(":")[0] for row in goals] == ["cache"] * len(goals)

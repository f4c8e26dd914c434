"""Every algorithm on every store: boundaries, burst, cost, refill, isolation, expiry, header
values, shadow checks, all-or-nothing counting and bans (``store_factory`` runs each test on
the memory store and on Redis); then properties of the arithmetic on the memory store."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.ratelimit.config import Algorithm
from bastion.ratelimit.core import BanRule, Check, RateLimitStore, Rule, Verdict
from bastion.ratelimit.memory import MemoryStore

if TYPE_CHECKING:
    from ratelimit.conftest import Backend

ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
WINDOWED = ("fixed_window", "sliding_window")
"""Counting in windows aligned on the epoch: a test must not straddle a boundary by accident."""


def rule(
    algorithm: Algorithm,
    limit: int,
    period: float,
    *,
    burst: int | None = None,
    policy: str | None = None,
) -> Rule:
    """A rule; the policy is named after the algorithm unless given."""
    return Rule(policy or algorithm, algorithm, limit, period, burst or limit)


def check(
    rule_: Rule, who: str = "a", *, cost: int = 1, enforce: bool = True, window: int = 1
) -> Check:
    """A check of ``rule_`` on client ``who``'s bucket (quota checks in calendar window 1)."""
    quota_window = window if rule_.algorithm == "quota" else None
    return Check(rule_, f"{rule_.policy}|ip:{who}", cost, enforce, quota_window)


async def one(store: RateLimitStore, check_: Check) -> Verdict:
    return await store.evaluate([check_])


async def exhaust(store: RateLimitStore, check_: Check, times: int) -> None:
    for _ in range(times):
        assert (await one(store, check_)).allowed


# -- boundaries, cost, isolation ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_limit_allowed_then_one_more_refused(
    store_factory: Backend, algorithm: Algorithm
) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(1.0)
    limited = check(rule(algorithm, 5, 1.0))
    for remaining in (4, 3, 2, 1, 0):
        verdict = await one(store, limited)
        assert verdict.allowed
        decision = verdict.decisions[0]
        assert (decision.allowed, decision.limit, decision.remaining) == (True, 5, remaining)
        assert decision.retry_after == 0.0
    verdict = await one(store, limited)
    assert not verdict.allowed
    assert verdict.banned_for == 0.0
    decision = verdict.decisions[0]
    assert (decision.allowed, decision.limit, decision.remaining) == (False, 5, 0)
    assert decision.retry_after > 0.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_cost_above_one(store_factory: Backend, algorithm: Algorithm) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(1.0)
    limits = rule(algorithm, 10, 1.0)
    for remaining in (7, 4, 1):
        verdict = await one(store, check(limits, cost=3))
        assert verdict.allowed
        assert verdict.decisions[0].remaining == remaining
    assert not (await one(store, check(limits, cost=3))).allowed
    # The refused cost-3 request took nothing: the last unit is still there.
    verdict = await one(store, check(limits, cost=1))
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_cost_above_capacity_never_passes(
    store_factory: Backend, algorithm: Algorithm
) -> None:
    store = await store_factory()
    verdict = await one(store, check(rule(algorithm, 3, 0.5), cost=4))
    assert not verdict.allowed
    assert verdict.decisions[0].remaining == 0
    assert verdict.decisions[0].retry_after > 0.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_buckets_are_isolated(store_factory: Backend, algorithm: Algorithm) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(1.0)
    first = rule(algorithm, 2, 1.0)
    other_policy = rule(algorithm, 2, 1.0, policy=f"{algorithm}.other")
    await exhaust(store, check(first, "a"), 2)
    assert not (await one(store, check(first, "a"))).allowed
    for fresh in (check(first, "b"), check(other_policy, "a")):
        verdict = await one(store, fresh)
        assert verdict.allowed
        assert verdict.decisions[0].remaining == 1


# -- refill over time and the values reported ---------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_allowed_again_after_retry_after(
    store_factory: Backend, algorithm: Algorithm
) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(0.4)
    limited = check(rule(algorithm, 2, 0.4))
    await exhaust(store, limited, 2)
    refused = await one(store, limited)
    assert not refused.allowed
    wait = refused.decisions[0].retry_after
    assert 0.0 < wait <= 0.8 + store_factory.tolerance
    if store_factory.exact:
        await store_factory.time.advance(wait - 0.001)
        assert not (await one(store, limited)).allowed
        await store_factory.time.advance(0.001 + 1e-6)
    else:
        await store_factory.time.advance(wait + store_factory.tolerance)
    assert (await one(store, limited)).allowed


async def test_gcra_burst_then_rate(store_factory: Backend) -> None:
    store = await store_factory()
    # 10 per second (one every 0.1 s), 3 at once.
    limited = check(rule("gcra", 10, 1.0, burst=3))
    await exhaust(store, limited, 3)
    refused = await one(store, limited)
    assert not refused.allowed
    decision = refused.decisions[0]
    assert decision.retry_after == pytest.approx(0.1, abs=store_factory.tolerance)
    assert decision.reset == pytest.approx(0.3, abs=store_factory.tolerance)
    for _ in range(3):
        # Exactly one interval: the bucket has room for exactly one (rounding tolerated).
        await store_factory.time.advance(0.1)
        verdict = await one(store, limited)
        assert verdict.allowed
        assert verdict.decisions[0].remaining == 0
        assert not (await one(store, limited)).allowed


async def test_gcra_values(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    limited = check(rule("gcra", 4, 1.0))  # one every 0.25 s, burst 4
    first = (await one(store, limited)).decisions[0]
    assert first.remaining == 3
    assert first.reset == pytest.approx(0.25, abs=tolerance)
    await exhaust(store, limited, 3)
    refused = (await one(store, limited)).decisions[0]
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert refused.reset == pytest.approx(1.0, abs=tolerance)
    assert refused.retry_after == pytest.approx(0.25, abs=tolerance)
    await store_factory.time.advance(0.5 + tolerance)
    again = (await one(store, limited)).decisions[0]
    assert again.remaining == 1
    assert again.reset == pytest.approx(0.75, abs=2 * tolerance)


async def test_fixed_window_values(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    await store_factory.time.align(0.5)
    limited = check(rule("fixed_window", 2, 0.5))
    await store_factory.time.advance(0.1)
    first = (await one(store, limited)).decisions[0]
    if store_factory.exact:
        assert first.reset == pytest.approx(0.4, abs=tolerance + 0.001)
    else:
        # Real time on a busy machine can only be late: the window's end is nearer, never
        # further, than 0.4 s away.
        assert 0.0 < first.reset <= 0.4 + tolerance
    await exhaust(store, limited, 1)
    refused = (await one(store, limited)).decisions[0]
    assert refused.retry_after == pytest.approx(refused.reset, abs=tolerance)
    assert refused.retry_after == pytest.approx(first.reset, abs=tolerance + 0.001)


async def test_sliding_window_weighs_the_previous_window(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    await store_factory.time.align(0.5)
    limited = check(rule("sliding_window", 4, 0.5))
    await exhaust(store, limited, 4)
    full = (await one(store, limited)).decisions[0]
    assert not full.allowed
    # Until the end of the next window.
    if store_factory.exact:
        assert full.reset == pytest.approx(1.0, abs=tolerance + 0.001)
    else:
        assert 0.5 < full.reset <= 1.0 + tolerance
    await store_factory.time.advance(0.5)
    # Just into the next window the previous one still weighs (nearly) fully: 4 of 4.
    refused = (await one(store, limited)).decisions[0]
    assert not refused.allowed
    # Its weight must fall to 3 of 4: a quarter of a window after this window began. Both
    # figures come from one reading of the store's clock, so wherever in the window the call
    # landed, the wait is the window's remaining time less three quarters of a window.
    assert refused.retry_after == pytest.approx(refused.reset - 0.375, abs=0.001)
    if store_factory.exact:
        assert refused.retry_after == pytest.approx(0.125, abs=tolerance + 0.001)
        assert refused.reset == pytest.approx(0.5, abs=tolerance + 0.001)
    await store_factory.time.advance(refused.retry_after + tolerance)
    verdict = await one(store, limited)
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 0
    # Until the end of the next window: 1.0 - 0.125 - the tolerance waited.
    if store_factory.exact:
        assert verdict.decisions[0].reset == pytest.approx(0.875 - tolerance, abs=tolerance + 0.001)
    else:
        assert 0.5 < verdict.decisions[0].reset <= 0.875


async def test_sliding_log_values(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    limited = check(rule("sliding_log", 4, 0.5))
    await exhaust(store, check(rule("sliding_log", 4, 0.5), cost=2), 1)
    await store_factory.time.advance(0.15)
    verdict = await one(store, check(rule("sliding_log", 4, 0.5), cost=2))
    assert verdict.decisions[0].reset == pytest.approx(0.5, abs=tolerance)
    await store_factory.time.advance(0.1)
    refused = (await one(store, limited)).decisions[0]
    assert not refused.allowed
    # The first two units leave 0.5 s after they came; the newest at 0.65.
    assert refused.retry_after == pytest.approx(0.25, abs=tolerance)
    assert refused.reset == pytest.approx(0.4, abs=tolerance)
    await store_factory.time.advance(refused.retry_after + tolerance)
    verdict = await one(store, limited)
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 1


async def test_concurrency_slots_are_released(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    inflight = rule("concurrency", 2, 30.0)
    await exhaust(store, check(inflight), 2)
    refused = (await one(store, check(inflight))).decisions[0]
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(30.0, abs=tolerance)
    await store.release([check(inflight), check(rule("gcra", 1, 1.0))])
    verdict = await one(store, check(inflight))
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 0
    await store.release([check(inflight, cost=2)])
    assert (await one(store, check(inflight, cost=2))).allowed


async def test_concurrency_slots_of_lost_requests_are_reclaimed(store_factory: Backend) -> None:
    store = await store_factory()
    inflight = check(rule("concurrency", 1, 0.3))
    await exhaust(store, inflight, 1)
    assert not (await one(store, inflight)).allowed
    await store_factory.time.advance(0.3 + store_factory.tolerance)
    assert (await one(store, inflight)).allowed


async def test_a_release_frees_only_its_own_requests_lease(store_factory: Backend) -> None:
    """A request that outlived its lease releases nothing that later requests hold: limit 2;
    A's lease lapses while A still runs; B and C take both slots; A's release must not let a
    third request in."""
    store = await store_factory()
    slots = rule("concurrency", 2, 0.3)

    def request(name: str) -> Check:
        return Check(slots, "concurrency|ip:a", lease=f"{name}:concurrency")

    assert (await one(store, request("A"))).allowed
    await store_factory.time.advance(0.3 + store_factory.tolerance)  # A's lease lapsed
    assert (await one(store, request("B"))).allowed
    assert (await one(store, request("C"))).allowed
    await store.release([request("A")])
    refused = await one(store, request("D"))
    assert not refused.allowed  # B and C are still in flight
    await store.release([request("B")])
    assert (await one(store, request("D"))).allowed
    await store.release([request("C")])
    await store.release([request("C")])  # released twice: the second frees nothing
    verdict = await one(store, request("E"))
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 0  # D and E hold the two slots
    assert not (await one(store, request("F"))).allowed


async def test_a_lease_of_several_units_is_released_whole(store_factory: Backend) -> None:
    store = await store_factory()
    slots = rule("concurrency", 3, 30.0)
    heavy = Check(slots, "concurrency|ip:a", 2, lease="big:concurrency")
    light = Check(slots, "concurrency|ip:a", lease="small:concurrency")
    assert (await one(store, heavy)).allowed
    assert (await one(store, light)).allowed
    await store.release([heavy])
    verdict = await one(store, Check(slots, "concurrency|ip:a", 2, lease="next:concurrency"))
    assert verdict.allowed
    assert verdict.decisions[0].remaining == 0


async def test_quota_never_goes_back_to_an_older_window(store_factory: Backend) -> None:
    """Instances whose clocks straddle midnight give the bucket alternating window ids; the
    newest one counted wins, so the count is never reset back and forth."""
    store = await store_factory()
    daily = rule("quota", 3, 30.0)
    assert (await one(store, check(daily, window=8))).decisions[0].remaining == 2
    late = (await one(store, check(daily, window=7))).decisions[0]  # a clock still on day 7
    assert (late.allowed, late.remaining) == (True, 1)
    assert (await one(store, check(daily, window=8))).decisions[0].remaining == 0
    assert not (await one(store, check(daily, window=7))).allowed
    assert not (await one(store, check(daily, window=8))).allowed
    assert (await one(store, check(daily, window=9))).decisions[0].remaining == 2
    # Day 8 is behind now: counted in day 9.
    assert (await one(store, check(daily, window=8))).decisions[0].remaining == 1


async def test_quota_counts_per_calendar_window(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    daily = rule("quota", 2, 0.6)
    first = (await one(store, check(daily, window=7))).decisions[0]
    assert first.reset == pytest.approx(0.6, abs=tolerance)
    await store_factory.time.advance(0.2)
    # Later requests keep the end the first one fixed, whatever period they carry.
    later = Rule("quota", "quota", 2, 0.4, 2)
    second = (await one(store, check(later, window=7))).decisions[0]
    assert second.reset == pytest.approx(0.4, abs=tolerance)
    refused = (await one(store, check(later, window=7))).decisions[0]
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.4, abs=tolerance)
    # The next calendar window starts a new count.
    assert (await one(store, check(daily, window=8))).allowed


# -- expiry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_buckets_expire_once_idle(store_factory: Backend, algorithm: Algorithm) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(0.3)
    limited = check(rule(algorithm, 3, 0.3))
    reset = (await one(store, limited)).decisions[0].reset
    ttls = await store_factory.ttls()
    assert len(ttls) == 1
    (ttl,) = ttls.values()
    # Kept exactly as long as it is not back to full (Redis rounds up to the millisecond).
    assert 0.0 < ttl <= reset + store_factory.tolerance
    assert ttl >= reset - store_factory.tolerance - 0.001
    await store_factory.time.advance(reset + store_factory.tolerance)
    if store_factory.exact:
        # The memory store drops idle buckets when it inserts others.
        assert isinstance(store, MemoryStore)
        await one(store, check(rule(algorithm, 3, 0.3), "someone else"))
        assert len(store) == 1
    else:
        assert await store_factory.ttls() == {}


# -- shadow checks and all-or-nothing ---------------------------------------------------------


async def test_shadow_checks_never_refuse_but_are_counted(store_factory: Backend) -> None:
    store = await store_factory()
    shadow = check(rule("gcra", 2, 60.0), enforce=False)
    enforced = check(rule("gcra", 10, 60.0, policy="enforced"))
    remaining = []
    for _ in range(3):
        verdict = await store.evaluate([shadow, enforced])
        assert verdict.allowed
        remaining.append((verdict.decisions[0].remaining, verdict.decisions[0].allowed))
    assert remaining == [(1, True), (0, True), (0, False)]
    assert (await one(store, enforced)).decisions[0].remaining == 6
    # Enforced, the same bucket is full.
    assert not (await one(store, check(rule("gcra", 2, 60.0)))).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_one_refusing_check_counts_none(store_factory: Backend, algorithm: Algorithm) -> None:
    store = await store_factory()
    if algorithm in WINDOWED:
        await store_factory.time.align(1.0)
    wide = check(rule(algorithm, 5, 1.0))
    narrow = check(rule(algorithm, 1, 1.0, policy="narrow"))
    assert (await store.evaluate([wide, narrow])).allowed
    refused = await store.evaluate([wide, narrow])
    assert not refused.allowed
    assert [decision.allowed for decision in refused.decisions] == [True, False]
    assert refused.decisions[0].remaining == 3
    # The wide bucket was not charged for the refused request.
    assert (await one(store, wide)).decisions[0].remaining == 3


# -- bans -----------------------------------------------------------------------------------

BANS = BanRule(threshold=3, window=10.0, durations=(0.3, 0.5), reset_after=0.6)


async def refuse(store: RateLimitStore, check_: Check, times: int) -> list[Verdict]:
    verdicts = [await store.evaluate([check_], client="c", bans=BANS) for _ in range(times)]
    assert not any(verdict.allowed for verdict in verdicts)
    return verdicts


async def test_refusals_ban_with_growing_durations(store_factory: Backend) -> None:
    store = await store_factory()
    tolerance = store_factory.tolerance
    limited = check(rule("gcra", 1, 3600.0))
    assert (await store.evaluate([limited], client="c", bans=BANS)).allowed
    first, second, third = await refuse(store, limited, 3)
    assert (first.new_ban, second.new_ban) == (0.0, 0.0)
    assert third.new_ban == pytest.approx(0.3, abs=tolerance)
    assert (third.ban_level, third.banned_for, len(third.decisions)) == (1, 0.0, 1)

    banned = await store.evaluate([limited], client="c", bans=BANS)
    assert not banned.allowed
    assert banned.decisions == ()
    assert banned.banned_for == pytest.approx(0.3, abs=tolerance)
    assert banned.ban_level == 1
    (record,) = await store.active_bans()
    assert (record.client, record.level) == ("c", 1)

    # Ended, then offending again within reset_after: the next duration, then the last again.
    for level, duration in ((2, 0.5), (3, 0.5)):
        await store_factory.time.advance(0.3 if level == 2 else 0.5)
        await store_factory.time.advance(tolerance)
        *_, banning = await refuse(store, limited, 3)
        assert banning.ban_level == level
        assert banning.new_ban == pytest.approx(duration)

    # Other clients and requests without bans are untouched.
    assert (await store.evaluate([check(limited.rule, "b")], client="d", bans=BANS)).allowed
    assert (await store.evaluate([limited])).banned_for == 0.0


async def test_banned_requests_are_not_counted(store_factory: Backend) -> None:
    store = await store_factory()
    limited = check(rule("gcra", 1, 3600.0))
    assert (await store.evaluate([limited], client="c", bans=BANS)).allowed
    await refuse(store, limited, 3)
    for _ in range(5):
        assert (await store.evaluate([limited], client="c", bans=BANS)).banned_for > 0.0
    await store_factory.time.advance(0.3 + store_factory.tolerance)
    # Two refusals are not a new ban: the banned requests did not count.
    verdicts = await refuse(store, limited, 2)
    assert all(verdict.new_ban == 0.0 for verdict in verdicts)


async def test_a_ban_after_reset_after_starts_at_the_first_duration(store_factory: Backend) -> None:
    store = await store_factory()
    limited = check(rule("gcra", 1, 3600.0))
    assert (await store.evaluate([limited], client="c", bans=BANS)).allowed
    await refuse(store, limited, 3)
    await store_factory.time.advance(0.3 + 0.6 + 0.05)
    *_, banning = await refuse(store, limited, 3)
    assert banning.ban_level == 1
    assert banning.new_ban == pytest.approx(0.3)


async def test_refusals_outside_the_window_do_not_ban(store_factory: Backend) -> None:
    store = await store_factory()
    bans = BanRule(threshold=2, window=0.2, durations=(5.0,), reset_after=5.0)
    limited = check(rule("gcra", 1, 3600.0))
    await exhaust(store, limited, 1)
    for _ in range(3):
        verdict = await store.evaluate([limited], client="c", bans=bans)
        assert not verdict.allowed
        assert verdict.new_ban == 0.0
        await store_factory.time.advance(0.2 + store_factory.tolerance)
    assert (await store.evaluate([limited], client="c", bans=bans)).new_ban == 0.0
    assert (await store.evaluate([limited], client="c", bans=bans)).new_ban == 5.0


async def test_lift_ends_the_ban_and_forgets_the_client(store_factory: Backend) -> None:
    store = await store_factory()
    limited = check(rule("gcra", 1, 3600.0))
    assert (await store.evaluate([limited], client="c", bans=BANS)).allowed
    await refuse(store, limited, 3)
    assert await store.lift("c")
    assert await store.active_bans() == []
    assert not await store.lift("c")
    assert not await store.lift("nobody")
    after = await store.evaluate([limited], client="c", bans=BANS)
    assert after.banned_for == 0.0
    assert after.decisions[0].allowed is False
    # Refusals and offence number were forgotten: two more refusals ban at level 1.
    *_, banning = await refuse(store, limited, 2)
    assert banning.ban_level == 1
    assert banning.new_ban == pytest.approx(0.3)


# -- properties of the arithmetic (memory store, exact time) ----------------------------------

_TIMES = st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=60).map(sorted)
"""Request times in milliseconds after the start, in order (several may coincide)."""


def _allowed_times(
    algorithm: Algorithm, limit: int, period: float, burst: int, times: list[int]
) -> list[float]:
    clock = [1_700_000_000.0]
    store = MemoryStore(clock=lambda: clock[0])
    limited = check(rule(algorithm, limit, period, burst=burst))
    allowed: list[float] = []
    for millis in times:
        clock[0] = 1_700_000_000.0 + millis / 1000
        if store.evaluate_now([limited]).allowed:
            allowed.append(millis / 1000)
    return allowed


@settings(max_examples=150, deadline=None)
@given(times=_TIMES, limit=st.integers(1, 6), period_ms=st.integers(100, 1500))
def test_sliding_log_never_exceeds_the_limit_in_any_window(
    times: list[int], limit: int, period_ms: int
) -> None:
    period = period_ms / 1000
    allowed = _allowed_times("sliding_log", limit, period, limit, times)
    for start in allowed:
        # A request counts until period after it: windows [start, start + period).
        assert sum(1 for t in allowed if start <= t < start + period - 1e-9) <= limit


@settings(max_examples=150, deadline=None)
@given(
    times=_TIMES,
    limit=st.integers(1, 6),
    burst=st.integers(1, 6),
    period_ms=st.integers(100, 1500),
)
def test_gcra_never_exceeds_burst_plus_rate(
    times: list[int], limit: int, burst: int, period_ms: int
) -> None:
    period = period_ms / 1000
    interval = period / limit
    allowed = _allowed_times("gcra", limit, period, burst, times)
    for start in allowed:
        in_window = [t for t in allowed if start <= t <= start + period]
        if in_window:
            span = in_window[-1] - start
            assert len(in_window) <= burst + math.floor(span / interval + 1e-3)
    if len(allowed) >= 2:
        # Over the whole run too: at most the burst, then one per interval.
        span = allowed[-1] - allowed[0]
        assert len(allowed) <= burst + math.floor(span / interval + 1e-3)


_COUNTING = ("gcra", "fixed_window", "sliding_window", "sliding_log", "concurrency")


@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(_COUNTING),
    steps=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 3)), min_size=1, max_size=40),
    limit=st.integers(3, 6),
    period_ms=st.integers(100, 1500),
)
def test_reported_values_are_what_happens_next(
    algorithm: Algorithm, steps: list[tuple[int, int]], limit: int, period_ms: int
) -> None:
    """After any requests (gap in ms, cost): ``remaining`` more units would pass and one more
    would not; a refused request passes once ``retry_after`` has passed (not a millisecond
    before, except for leases whose retry time is an upper bound: releases come sooner); the
    bucket is full once ``reset`` has passed, and not a millisecond before. To 0.1 ms."""
    period = period_ms / 1000
    clock = [1_700_000_000.0]
    store = MemoryStore(clock=lambda: clock[0])
    limits = rule(algorithm, limit, period)
    for gap, cost in steps:
        clock[0] += gap / 1000
        verdict = store.evaluate_now([check(limits, cost=cost)])
        decision = verdict.decisions[0]
        if verdict.allowed:
            assert decision.retry_after == 0.0
            if decision.remaining:
                assert _fits(store, limits, decision.remaining)
            assert not _fits(store, limits, decision.remaining + 1)
            continue
        assert decision.remaining == 0
        if algorithm != "concurrency" and decision.retry_after > 0.001:
            clock[0] += decision.retry_after - 0.001
            assert not _fits(store, limits, cost)
            clock[0] += 0.001 + 1e-4
        else:
            clock[0] += decision.retry_after + 1e-4
        assert _fits(store, limits, cost)
    reset = store.evaluate_now([check(limits)]).decisions[0].reset
    assert reset > 0.0
    if reset > 0.001:
        clock[0] += reset - 0.001
        assert not _fits(store, limits, limit)
        clock[0] += 0.001 + 1e-4
    else:
        clock[0] += reset + 1e-4
    assert _fits(store, limits, limit)


def _fits(store: MemoryStore, limits: Rule, cost: int) -> bool:
    """Whether a request of ``cost`` would pass now, without counting it: as a shadow check
    next to an enforced one that always refuses, so nothing is counted."""
    probe = check(limits, cost=cost, enforce=False)
    blocker = check(rule("gcra", 1, 1.0, policy="probe.blocker"), cost=2)
    verdict = store.evaluate_now([probe, blocker])
    assert not verdict.allowed
    return verdict.decisions[0].allowed

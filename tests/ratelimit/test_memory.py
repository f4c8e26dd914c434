"""What only the memory store does: bounded memory (eviction within a policy's share, idle
sweep), the ban ledger, lease bookkeeping, and its one-check fast path."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bastion.ratelimit.config import Algorithm
from bastion.ratelimit.core import (
    RATELIMIT,
    BanRule,
    Check,
    Decision,
    Penalty,
    Rule,
    Verdict,
    merge_penalty,
)
from bastion.ratelimit.memory import SWEEP, MemoryStore

START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLedger:
    """The in-process mirror a real ledger keeps: bans by client, and what was recorded."""

    bans: dict[str, tuple[float, int]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    recorded: list[tuple[str, float, int] | tuple[str, float, int, str]] = field(
        default_factory=list
    )

    def penalty(self, client: str) -> Penalty:
        until, level = self.bans.get(client, (0.0, 0))
        return Penalty(until, level, self.sources.get(client, RATELIMIT))

    def record(self, client: str, *, until: float, level: int, source: str = RATELIMIT) -> None:
        if source == RATELIMIT:
            self.recorded.append((client, until, level))
        else:
            self.recorded.append((client, until, level, source))
        current = self.penalty(client) if client in self.bans else None
        merged = merge_penalty(current, until, level, source)
        self.bans[client] = (merged.until, merged.level)
        self.sources[client] = merged.source


def limit(
    algorithm: Algorithm = "gcra", limit_: int = 10, period: float = 3600.0, *, policy: str = "p"
) -> Rule:
    return Rule(policy, algorithm, limit_, period, limit_)


def on(rule: Rule, who: str, cost: int = 1) -> Check:
    return Check(rule, f"{rule.policy}|{who}", cost)


def remaining(store: MemoryStore, check: Check) -> int:
    verdict = store.evaluate_now([check])
    assert verdict.allowed
    return verdict.decisions[0].remaining


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- results -----------------------------------------------------------------------------------


def test_results_are_immutable_named_tuples(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    verdict = store.evaluate_now([on(limit("gcra", 10, 3600.0), "a")])
    assert verdict == Verdict(True, (Decision(True, 10, 9, 360.0, 0.0),), 0.0, 0.0, 0)
    assert type(verdict) is Verdict
    assert type(verdict.decisions[0]) is Decision
    assert (verdict.banned_for, verdict.new_ban, verdict.ban_level) == (0.0, 0.0, 0)
    with pytest.raises(AttributeError):
        verdict.decisions[0].remaining = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        verdict.allowed = False  # type: ignore[misc]


@pytest.mark.parametrize("enforce", [True, False], ids=["enforced", "shadow"])
def test_one_gcra_check_decides_as_the_general_path(clock: Clock, enforce: bool) -> None:
    """The one-check path and the loop over several checks give the same decisions."""
    alone, beside = MemoryStore(clock=clock), MemoryStore(clock=clock)
    rule = Rule("p", "gcra", 4, 2.0, 3)
    other = on(limit("gcra", 1000, policy="other"), "a")
    steps = [(0.0, 1), (0.1, 1), (0.0, 2), (0.3, 1), (0.5, 3), (2.0, 1), (0.0, 4), (0.01, 1)]
    for advance, cost in steps:
        clock.now += advance
        check = Check(rule, "p|a", cost, enforce)
        one = alone.evaluate_now([check], client="c", bans=BANS)
        two = beside.evaluate_now([check, other], client="c", bans=BANS)
        assert one.decisions == two.decisions[:1]
        assert (one.allowed, one.new_ban) == (two.allowed, two.new_ban)


def test_invalid_uses_are_refused(clock: Clock) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryStore(max_keys=0)
    store = MemoryStore(clock=clock)
    with pytest.raises(ValueError, match=r"needs Check\.window"):
        store.evaluate_now([Check(limit("quota"), "k")])


async def test_evaluate_is_evaluate_now(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    check = on(limit(), "a")
    assert (await store.evaluate([check])).decisions[0].remaining == 9
    assert store.evaluate_now([check]).decisions[0].remaining == 8


# -- bounded memory ----------------------------------------------------------------------------


def test_max_keys_evicts_the_least_recently_used(clock: Clock) -> None:
    store = MemoryStore(max_keys=3, clock=clock)
    rule = limit()
    for who in ("a", "b", "c"):
        clock.now += 1
        assert remaining(store, on(rule, who)) == 9
    clock.now += 1
    assert remaining(store, on(rule, "a")) == 8  # a is now the most recently used
    clock.now += 1
    assert remaining(store, on(rule, "d")) == 9
    assert len(store) == 3
    # b was evicted (its count with it); a and c were kept.
    clock.now += 1
    assert remaining(store, on(rule, "a")) == 7
    assert remaining(store, on(rule, "c")) == 8
    assert remaining(store, on(rule, "b")) == 9  # back empty, evicting d
    assert len(store) == 3


def test_a_policy_over_its_share_evicts_its_own_buckets(clock: Clock) -> None:
    store = MemoryStore(max_keys=2, clock=clock)
    first, second = limit(policy="first"), limit(policy="second")
    assert remaining(store, on(first, "a")) == 9
    clock.now += 1
    assert remaining(store, on(second, "a")) == 9
    clock.now += 1
    assert remaining(store, on(first, "b")) == 9  # first holds 2 of 2: it gives up first|a
    assert len(store) == 2
    assert remaining(store, on(second, "a")) == 8
    assert remaining(store, on(first, "a")) == 9


def test_a_flood_of_keys_on_one_policy_never_evicts_other_clients_buckets(clock: Clock) -> None:
    """Clients choosing ``header:`` values (or spoofed addresses) fill one policy's table; the
    other policies' buckets, and so their clients' counts, survive it."""
    store = MemoryStore(max_keys=1000, clock=clock)
    per_ip, per_header = limit(policy="global"), limit(policy="header")
    for client in range(100):
        assert remaining(store, on(per_ip, f"ip:{client}")) == 9
    for flood in range(5000):
        clock.now += 0.001
        store.evaluate_now([on(per_header, f"x={flood}")])
    assert len(store) == 1000
    for client in range(100):
        assert remaining(store, on(per_ip, f"ip:{client}")) == 8
    # A new client of the small policy takes its room from the flooded one.
    for client in range(100, 200):
        assert remaining(store, on(per_ip, f"ip:{client}")) == 9
    assert len(store) == 1000
    assert all(remaining(store, on(per_ip, f"ip:{client}")) == 7 for client in range(100))


def test_idle_buckets_are_swept_a_few_per_insertion(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    rule = limit("gcra", 1, 1.0)
    for index in range(100):
        store.evaluate_now([on(rule, f"idle{index}")])
    assert len(store) == 100
    clock.now += 2.0  # every bucket is full again
    store.evaluate_now([on(rule, "new0")])
    assert len(store) == 100 - SWEEP + 1
    for index in range(1, 50):
        store.evaluate_now([on(rule, f"new{index}")])
    assert len(store) == 50  # the idle ones are gone; the 50 new ones, not idle, stay
    # Reading or counting a bucket already there sweeps nothing.
    clock.now += 2.0
    for _ in range(50):
        assert not store.evaluate_now([on(rule, "new0", cost=2)]).allowed
    assert len(store) == 50


def test_the_sweep_stops_at_a_bucket_still_in_use(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    rule = limit("gcra", 1, 1.0)
    # Another policy's table: never in the way of this one's sweep.
    store.evaluate_now([on(limit("gcra", 1, 100.0, policy="long"), "a")])
    store.evaluate_now([on(rule, "first")])
    clock.now += 0.5
    store.evaluate_now([on(rule, "second")])
    clock.now += 0.6  # "first" is idle, "second" not yet
    store.evaluate_now([on(rule, "third")])
    assert len(store) == 3  # first swept; second stopped the sweep
    clock.now += 1.5
    store.evaluate_now([on(rule, "fourth")])
    assert len(store) == 2  # second and third swept; long|a stays


def test_a_policy_whose_algorithm_changed_starts_afresh(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    assert remaining(store, on(limit("gcra", 10, policy="api"), "a")) == 9
    assert remaining(store, on(limit("gcra", 10, policy="api"), "b")) == 9
    assert len(store) == 2
    windowed = limit("fixed_window", 10, 60.0, policy="api")
    assert remaining(store, on(windowed, "a")) == 9
    assert len(store) == 1


async def test_close_forgets_everything(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    bans = BanRule(threshold=1, window=60.0, durations=(60.0,), reset_after=60.0)
    rule = limit("gcra", 1)
    store.evaluate_now([on(rule, "a")])
    store.evaluate_now([on(rule, "a")], client="c", bans=bans)
    assert len(store) == 1
    assert len(await store.active_bans()) == 1
    await store.close()
    assert len(store) == 0
    assert await store.active_bans() == []
    assert store.evaluate_now([on(rule, "a")], client="c", bans=bans).allowed


# -- bans ----------------------------------------------------------------------------------------

BANS = BanRule(threshold=2, window=60.0, durations=(10.0, 20.0, 40.0), reset_after=300.0)


def offend(store: MemoryStore, client: str, times: int = 2) -> Verdict:
    """Refusals of ``client`` on an exhausted bucket; the last verdict."""
    exhausted = Check(limit("gcra", 1, 3600.0, policy="strict"), f"strict|{client}", 2)
    verdicts = [store.evaluate_now([exhausted], client=client, bans=BANS) for _ in range(times)]
    assert not any(verdict.allowed for verdict in verdicts)
    return verdicts[-1]


async def test_active_bans_lists_only_current_ones(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    assert offend(store, "a").new_ban == 10.0
    clock.now += 5.0
    assert offend(store, "b").new_ban == 10.0

    listed = sorted((ban.client, ban.until, ban.level) for ban in await store.active_bans())
    assert listed == [("a", START + 10.0, 1), ("b", START + 15.0, 1)]
    clock.now += 6.0
    listed = sorted((ban.client, ban.until, ban.level) for ban in await store.active_bans())
    assert listed == [("b", START + 15.0, 1)]


def test_new_bans_are_recorded_in_the_ledger(clock: Clock) -> None:
    ledger = FakeLedger()
    store = MemoryStore(clock=clock, ledger=ledger)
    verdict = offend(store, "a")
    assert (verdict.new_ban, verdict.ban_level) == (10.0, 1)
    assert ledger.recorded == [("a", START + 10.0, 1)]


def test_a_lift_in_the_ledger_ends_the_ban_in_the_process_that_started_it(
    clock: Clock,
) -> None:
    ledger = FakeLedger()
    store = MemoryStore(clock=clock, ledger=ledger)
    assert offend(store, "a").new_ban == 10.0
    allowed = Check(limit(), "p|a")
    assert store.evaluate_now([allowed], client="a", bans=BANS).banned_for > 0
    del ledger.bans["a"]  # `bastion bans lift a` elsewhere, seen by this ledger's poll
    assert store.evaluate_now([allowed], client="a", bans=BANS).allowed


def test_bans_of_other_processes_are_honoured(clock: Clock) -> None:
    ledger = FakeLedger(bans={"a": (START + 30.0, 2)})
    store = MemoryStore(clock=clock, ledger=ledger)
    allowed = Check(limit(), "p|a")
    verdict = store.evaluate_now([allowed], client="a", bans=BANS)
    assert (verdict.allowed, verdict.decisions) == (False, ())
    assert (verdict.banned_for, verdict.ban_level) == (30.0, 2)
    # Without ban rules (or without a client) bans are not looked at.
    assert store.evaluate_now([allowed]).allowed
    assert store.evaluate_now([allowed], client="b", bans=BANS).allowed
    assert ledger.recorded == []


def test_a_ban_elsewhere_counts_for_the_next_offence(clock: Clock) -> None:
    ledger = FakeLedger(bans={"a": (START - 100.0, 2)})  # ended 100 s ago, within reset_after
    store = MemoryStore(clock=clock, ledger=ledger)
    verdict = offend(store, "a")
    assert (verdict.new_ban, verdict.ban_level) == (40.0, 3)
    assert ledger.recorded == [("a", START + 40.0, 3)]
    ledger.bans["b"] = (START - 301.0, 3)  # forgiven: longer ago than reset_after
    assert offend(store, "b").ban_level == 1


def test_offences_beyond_the_durations_repeat_the_last(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    levels = []
    for _ in range(5):
        verdict = offend(store, "a")
        levels.append((verdict.ban_level, verdict.new_ban))
        clock.now += verdict.new_ban
    assert levels == [(1, 10.0), (2, 20.0), (3, 40.0), (4, 40.0), (5, 40.0)]


def test_client_records_are_bounded_too(clock: Clock) -> None:
    store = MemoryStore(max_keys=2, clock=clock)
    for client in ("a", "b", "c"):  # c's record evicts a's
        assert offend(store, client, times=1).new_ban == 0.0
    assert offend(store, "c", times=1).new_ban == 10.0
    assert offend(store, "a", times=1).new_ban == 0.0  # a's first refusal was forgotten


# -- concurrency leases --------------------------------------------------------------------------


def test_a_release_without_a_token_frees_the_oldest_lease(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    inflight = on(limit("concurrency", 3, 10.0), "a")
    assert remaining(store, inflight) == 2  # lease until START + 10
    clock.now += 4.0
    assert remaining(store, inflight) == 1  # lease until START + 14
    store.release_now([inflight])
    # The lease kept is the newer one: still held after the older would have expired.
    clock.now += 7.0
    assert remaining(store, inflight) == 1
    clock.now += 4.0  # the kept lease expired too
    assert remaining(store, inflight) == 1


def test_a_release_frees_only_its_own_tokens_leases(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    slots = limit("concurrency", 4, 10.0)

    def request(token: str, cost: int = 1) -> Check:
        return Check(slots, "p|a", cost, lease=token)

    assert remaining(store, request("r1:p", cost=2)) == 2
    clock.now += 1.0
    assert remaining(store, request("r2:p")) == 1
    store.release_now([request("r2:p")])  # the newest request ends first
    assert remaining(store, request("r3:p")) == 1  # r1's two slots are still held
    store.release_now([request("r1:p", cost=2)])
    store.release_now([request("r1:p", cost=2)])  # a second release of it frees nothing more
    assert remaining(store, request("r4:p")) == 2  # r3 and r4 hold one each
    # A token acquired again is renewed, not held twice: r5 finds two slots held, not three.
    store.evaluate_now([request("r4:p")])
    assert remaining(store, request("r5:p")) == 1


def test_releases_without_a_slot_are_ignored(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    inflight = on(limit("concurrency", 2, 10.0), "a")
    counted = on(limit("gcra", policy="g"), "a")
    store.evaluate_now([counted])
    store.release_now([inflight, counted])  # no slot held; not a concurrency check
    store.release_now([on(limit("concurrency", policy="g"), "a")])  # g counts with GCRA here
    assert remaining(store, counted) == 8
    assert remaining(store, inflight) == 1
    store.release_now([Check(inflight.rule, inflight.key, cost=5)])  # more than held
    assert remaining(store, inflight) == 1
    assert len(store) == 2


def test_a_fully_released_bucket_is_idle(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    rule = limit("concurrency", 2, 10.0)
    store.evaluate_now([on(rule, "a")])
    store.release_now([on(rule, "a")])
    store.evaluate_now([on(rule, "b")])  # the insertion sweeps a, idle at once
    assert len(store) == 1

"""The in-process rate-limit store: counters in dictionaries, decided without awaiting.

Used alone (one process, or several whose counters need not be shared), as the ``local``
fallback while Redis is unreachable, and by the stage's fast path (:meth:`evaluate_now`). A call
does all its work synchronously, so on the event loop it is atomic without a lock.

Buckets live in one ordered table per policy, least recently touched first. Memory is bounded
two ways, neither of them a scan:

- idle expiry: every bucket records when it is back to full (GCRA ``tat``, a window's end, the
  newest log entry or lease plus the period). Each insertion into a policy's table first looks
  at its least recently touched buckets and drops up to :data:`SWEEP` of them that are idle, so
  idle buckets leave at least as fast as new ones come. Within one policy, buckets touched
  later go idle later give or take one period, so an idle bucket is dropped about one period
  (one calendar window for quotas) after it went idle at the latest, if the table is growing;
  an access to an idle bucket simply starts it afresh (the arithmetic of an idle state is that
  of a new one);
- ``max_keys``: inserting a bucket beyond it evicts the least recently touched one of all
  tables (comparing the tables' oldest entries: one comparison per policy).

Bans follow the module rules of :mod:`bastion.ratelimit.core`: per client the times of its
refusals within ``BanRule.window`` (at most ``threshold`` of them), its latest ban's end and its
offence number (``ban_level``: 1 for the first ban; the duration is
``durations[min(level, len(durations)) - 1]``). A ban starts at the ``threshold``-th refusal
within the window; it is the next offence when it starts within ``reset_after`` of the previous
ban's end, else offence 1. The refusal that starts a ban reports ``new_ban`` and ``ban_level``
with its decisions (``banned_for`` stays 0: that request was counted); later requests get
``banned_for`` until it ends. :meth:`MemoryStore.lift` forgets the client entirely. With a
:class:`~bastion.ratelimit.core.BanLedger` the ban check also honours bans other processes
started, their latest ban counts for the next offence, and every new ban is recorded there.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import cast

from bastion.ratelimit.algorithms import (
    Leases,
    SlidingLog,
    fixed_window,
    gcra,
    quota,
    sliding_window,
)
from bastion.ratelimit.config import Algorithm
from bastion.ratelimit.core import (
    BanLedger,
    BanRecord,
    BanRule,
    Check,
    Decision,
    Verdict,
)


def _slot_setters(
    cls: type, names: tuple[str, ...]
) -> tuple[Callable[[object, object], None], ...]:
    """The slot descriptors' setters of a frozen dataclass, checked against its fields."""
    if tuple(field.name for field in dataclasses.fields(cls)) != names:
        raise RuntimeError(f"{cls.__name__}'s fields changed: update bastion.ratelimit.memory")
    return tuple(cls.__dict__[name].__set__ for name in names)


# A frozen dataclass's __init__ sets each field through object.__setattr__, about 0.75 us for a
# Decision or a Verdict; writing the slots directly takes half that, and both are built on
# every request. The values are the same objects __init__ would make (tested).
_new = object.__new__
_D_ALLOWED, _D_LIMIT, _D_REMAINING, _D_RESET, _D_RETRY = _slot_setters(
    Decision, ("allowed", "limit", "remaining", "reset", "retry_after")
)
_V_ALLOWED, _V_DECISIONS, _V_BANNED, _V_NEW_BAN, _V_LEVEL = _slot_setters(
    Verdict, ("allowed", "decisions", "banned_for", "new_ban", "ban_level")
)


def _decision(allowed: bool, limit: int, remaining: int, reset: float, retry: float) -> Decision:
    """``Decision(allowed, limit, remaining, reset, retry)``, faster."""
    decision: Decision = _new(Decision)
    _D_ALLOWED(decision, allowed)
    _D_LIMIT(decision, limit)
    _D_REMAINING(decision, remaining)
    _D_RESET(decision, reset)
    _D_RETRY(decision, retry)
    return decision


def _verdict(
    allowed: bool,
    decisions: tuple[Decision, ...],
    banned_for: float,
    new_ban: float,
    ban_level: int,
) -> Verdict:
    """``Verdict(allowed, decisions, banned_for, new_ban, ban_level)``, faster."""
    verdict: Verdict = _new(Verdict)
    _V_ALLOWED(verdict, allowed)
    _V_DECISIONS(verdict, decisions)
    _V_BANNED(verdict, banned_for)
    _V_NEW_BAN(verdict, new_ban)
    _V_LEVEL(verdict, ban_level)
    return verdict


__all__ = ["SWEEP", "MemoryStore"]

SWEEP = 2
"""Idle buckets (or client records) examined per insertion: more than one, so the idle ones
leave faster than insertions add, and few enough to stay O(1)."""

# A bucket is a list: [expires, touched, *state]. ``expires`` is when it is idle (back to full),
# ``touched`` orders eviction across tables. The state after them depends on the algorithm:
#   gcra            (nothing: expires is the tat)
#   fixed_window    window, count
#   sliding_window  window, current, previous
#   quota           window, count
#   sliding_log     SlidingLog
#   concurrency     Leases
_EXPIRES = 0
_TOUCHED = 1


class _Table:
    """One policy's buckets, least recently touched first."""

    __slots__ = ("algorithm", "buckets", "plain")

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self.plain = algorithm not in ("sliding_log", "concurrency")
        """The state is numbers only: counting a request is replacing the bucket's list."""
        self.buckets: OrderedDict[str, list[object]] = OrderedDict()


class _Client:
    """A client's ban state."""

    __slots__ = ("expires", "level", "refusals", "touched", "until")

    def __init__(self) -> None:
        self.refusals: deque[float] = deque()
        self.until = 0.0
        """End of the latest ban (0: none)."""
        self.level = 0
        """Offence number of the latest ban."""
        self.expires = 0.0
        """When nothing of this record matters any more (refusals aged out, ban forgiven)."""


class MemoryStore:
    """:class:`~bastion.ratelimit.core.RateLimitStore` in this process's memory."""

    def __init__(
        self,
        *,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        ledger: BanLedger | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._ledger = ledger
        self._tables: dict[str, _Table] = {}
        self._size = 0
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held (for metrics and tests)."""
        return self._size

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
    ) -> Verdict:
        """Decide and count one request's checks (rules in :mod:`bastion.ratelimit.core`)."""
        return self.evaluate_now(checks, client=client, bans=bans)

    def evaluate_now(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
    ) -> Verdict:
        """:meth:`evaluate` without the coroutine, for callers already on the hot path.

        The checks of one request name different buckets (a key starts with its policy's
        name); two checks of the same bucket would be decided on the same state."""
        now = self._clock()
        if bans is not None and client is not None:
            until, level = self._ban_of(client)
            if until > now:
                return _verdict(False, (), until - now, 0.0, level)
        decisions: list[Decision] = []
        # The state each allowing check stores if the whole request is allowed.
        counted: list[tuple[_Table, Check, list[object]]] = []
        allowed = True
        tables = self._tables
        for check in checks:
            rule = check.rule
            algorithm = rule.algorithm
            table = tables.get(rule.policy)
            if table is None or table.algorithm != algorithm:
                table = self._replace_table(rule.policy, algorithm)
            bucket = table.buckets.get(check.key)
            if algorithm == "gcra":
                ok, tat, remaining, reset, retry = gcra(
                    bucket[_EXPIRES] if bucket is not None else 0.0,  # type: ignore[arg-type]
                    now,
                    check.cost,
                    rule.limit,
                    rule.period,
                    rule.burst,
                )
                update: list[object] = [tat, now]
            else:
                ok, remaining, reset, retry, update = self._decide(bucket, check, now)
            decisions.append(_decision(ok, rule.limit, remaining, reset, retry))
            if ok:
                counted.append((table, check, update))
            elif check.enforce:
                allowed = False
        if allowed:
            for table, check, update in counted:
                buckets = table.buckets
                key = check.key
                if table.plain and key in buckets:
                    # The common case, inline: an existing bucket of an arithmetic algorithm.
                    buckets[key] = update
                    buckets.move_to_end(key)
                else:
                    self._store(table, check, update, now)
            return _verdict(True, tuple(decisions), 0.0, 0.0, 0)
        if bans is not None and client is not None:
            return self._refused(client, bans, tuple(decisions), now)
        return _verdict(False, tuple(decisions), 0.0, 0.0, 0)

    def _decide(
        self, bucket: list[object] | None, check: Check, now: float
    ) -> tuple[bool, int, float, float, list[object]]:
        """Every algorithm but GCRA: ``(allowed, remaining, reset, retry_after, update)``."""
        rule = check.rule
        algorithm = rule.algorithm
        cost, limit, period = check.cost, rule.limit, rule.period
        if algorithm in _NEW_STATE:
            state = bucket if bucket is not None else _NEW_STATE[algorithm]
        if algorithm == "sliding_window":
            ok, window, current, previous, remaining, reset, retry = sliding_window(
                state[2],  # type: ignore[arg-type]
                state[3],  # type: ignore[arg-type]
                state[4],  # type: ignore[arg-type]
                now,
                cost,
                limit,
                period,
            )
            return ok, remaining, reset, retry, [now + reset, now, window, current, previous]
        if algorithm == "fixed_window":
            ok, window, count, remaining, reset, retry = fixed_window(
                state[2],  # type: ignore[arg-type]
                state[3],  # type: ignore[arg-type]
                now,
                cost,
                limit,
                period,
            )
            return ok, remaining, reset, retry, [now + reset, now, window, count]
        if algorithm == "quota":
            if check.window is None:
                raise ValueError(f"policy {rule.policy!r}: a quota check needs Check.window")
            ok, window, end, count, remaining, reset, retry = quota(
                state[2],  # type: ignore[arg-type]
                state[3],  # type: ignore[arg-type]
                state[0],  # type: ignore[arg-type]
                check.window,
                now,
                cost,
                limit,
                period,
            )
            return ok, remaining, reset, retry, [end, now, window, count]
        if algorithm == "sliding_log":
            log = bucket[2] if bucket is not None else SlidingLog()
            assert isinstance(log, SlidingLog)
            log.prune(now, period)
            ok, remaining, reset, retry = log.decide(now, cost, limit, period)
            return ok, remaining, reset, retry, [now + period, now, log]
        if algorithm == "concurrency":
            leases = bucket[2] if bucket is not None else Leases()
            assert isinstance(leases, Leases)
            leases.reclaim(now)
            ok, remaining, reset, retry = leases.decide(now, cost, limit, period)
            return ok, remaining, reset, retry, [now + period, now, leases]
        raise ValueError(f"policy {rule.policy!r}: unknown algorithm {algorithm!r}")

    def _store(self, table: _Table, check: Check, update: list[object], now: float) -> None:
        """Count an allowed check: write its new state, most recently touched last."""
        buckets = table.buckets
        key = check.key
        algorithm = table.algorithm
        if algorithm == "sliding_log":
            log = update[2]
            assert isinstance(log, SlidingLog)
            log.add(now, check.cost)
        elif algorithm == "concurrency":
            leases = update[2]
            assert isinstance(leases, Leases)
            leases.acquire(now, check.cost, check.rule.period)
        if key in buckets:
            buckets[key] = update
            buckets.move_to_end(key)
            return
        # Only an insertion grows memory, so sweeping here keeps pace with it at O(1) a call.
        self._sweep(buckets, now)
        buckets[key] = update
        self._size += 1
        if self._size > self._max_keys:
            self._evict()

    def _sweep(self, buckets: OrderedDict[str, list[object]], now: float) -> None:
        """Drop up to :data:`SWEEP` idle buckets from the least recently touched end."""
        for _ in range(SWEEP):
            if not buckets:
                return
            key = next(iter(buckets))
            if buckets[key][_EXPIRES] > now:  # type: ignore[operator]
                return
            del buckets[key]
            self._size -= 1

    def _evict(self) -> None:
        """Drop the least recently touched bucket of all tables."""
        oldest: OrderedDict[str, list[object]] | None = None
        oldest_touched = 0.0
        for table in self._tables.values():
            if table.buckets:
                touched = cast(float, next(iter(table.buckets.values()))[_TOUCHED])
                if oldest is None or touched < oldest_touched:
                    oldest, oldest_touched = table.buckets, touched
        if oldest is not None:
            oldest.popitem(last=False)
            self._size -= 1

    def _replace_table(self, policy: str, algorithm: Algorithm) -> _Table:
        """A new table for ``policy``; a policy whose algorithm changed starts afresh."""
        previous = self._tables.get(policy)
        if previous is not None:
            self._size -= len(previous.buckets)
        table = self._tables[policy] = _Table(algorithm)
        return table

    # -- bans -------------------------------------------------------------------------------

    def _ban_of(self, client: str) -> tuple[float, int]:
        """``(until, level)`` of the client's latest ban: with a ledger, the ledger's alone (it
        mirrors this process's bans at once and everyone else's within its poll), so a lift
        made anywhere (``bastion bans lift``) ends the ban here too."""
        if self._ledger is not None:
            return self._ledger.banned_until(client)
        record = self._clients.get(client)
        return (record.until, record.level) if record is not None else (0.0, 0)

    def _refused(
        self, client: str, bans: BanRule, decisions: tuple[Decision, ...], now: float
    ) -> Verdict:
        """Count a refusal; the ``threshold``-th within the window starts a ban."""
        previous_until, previous_level = self._ban_of(client)
        record = self._clients.get(client)
        if record is None:
            record = self._clients[client] = _Client()
            if len(self._clients) > self._max_keys:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        refusals = record.refusals
        horizon = now - bans.window
        while refusals and refusals[0] <= horizon:
            refusals.popleft()
        refusals.append(now)
        record.expires = max(now + bans.window, record.until + bans.reset_after)
        self._sweep_clients(now)
        if len(refusals) < bans.threshold:
            return _verdict(False, decisions, 0.0, 0.0, 0)
        repeat = previous_until > 0.0 and now - previous_until <= bans.reset_after
        level = previous_level + 1 if repeat else 1
        duration = bans.durations[min(level, len(bans.durations)) - 1]
        record.until = now + duration
        record.level = level
        record.expires = record.until + bans.reset_after
        refusals.clear()
        if self._ledger is not None:
            self._ledger.record(client, until=record.until, level=level)
        return _verdict(False, decisions, 0.0, duration, level)

    def _sweep_clients(self, now: float) -> None:
        """Drop up to :data:`SWEEP` client records nothing depends on any more."""
        clients = self._clients
        for _ in range(SWEEP):
            if not clients:
                return
            client = next(iter(clients))
            if clients[client].expires > now:
                return
            del clients[client]

    # -- the rest of the store interface ----------------------------------------------------

    async def release(self, checks: Sequence[Check]) -> None:
        """Give back the slots of ``concurrency`` checks an allowed request held."""
        self.release_now(checks)

    def release_now(self, checks: Sequence[Check]) -> None:
        """:meth:`release` without the coroutine."""
        for check in checks:
            rule = check.rule
            if rule.algorithm != "concurrency":
                continue
            table = self._tables.get(rule.policy)
            if table is None or table.algorithm != "concurrency":
                continue
            bucket = table.buckets.get(check.key)
            if bucket is None:
                continue
            leases = bucket[2]
            assert isinstance(leases, Leases)
            leases.release(check.cost)
            # Empty: idle now, so the next sweep may drop it.
            bucket[_EXPIRES] = leases.expires()

    async def active_bans(self) -> list[BanRecord]:
        """Clients this process banned whose ban is not over (the ledger lists everyone's)."""
        now = self._clock()
        return [
            BanRecord(client, record.until, record.level)
            for client, record in self._clients.items()
            if record.until > now
        ]

    async def lift(self, client: str) -> bool:
        """Forget the client: its ban, refusals and offence number (a later ban is offence 1
        again, as after a lift in the ledger). A ban recorded in the ledger is lifted there
        (``SqlBanLedger.lift``), which every process then follows. False when this process
        held no ban for it."""
        record = self._clients.pop(client, None)
        return record is not None and record.until > self._clock()

    async def close(self) -> None:
        """Forget every bucket and ban."""
        self._tables.clear()
        self._clients.clear()
        self._size = 0


_NEW_STATE: dict[str, list[object]] = {
    "sliding_window": [0.0, 0.0, -1, 0, 0],
    "fixed_window": [0.0, 0.0, -1, 0],
    "quota": [0.0, 0.0, None, 0],
}
"""The state a new bucket starts from (window ids no real window has)."""

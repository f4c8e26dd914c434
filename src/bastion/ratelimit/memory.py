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
- ``max_keys``: inserting a bucket beyond it evicts one, fairly between policies. The policy
  that grew gives up its own least recently touched bucket when it holds more than its share
  (``max_keys`` divided among the policies); otherwise the largest table does (one length
  per policy compared). So keys a client chooses (``header:`` values, spoofed addresses)
  flooding one policy only churn that policy's buckets, and never reset the counts of other
  policies' clients (a global LRU would hand each new attacker key a victim's bucket).

Decisions are built as named tuples through ``tuple.__new__``, and one GCRA check (the built-in
``global`` alone) takes a path without the lists the general loop keeps: the store runs on
every request, so its fixed cost per call matters as much as its cost per check.

Concurrency leases are recorded under the request's token (``Check.lease``), so a release frees
exactly that request's slots (:class:`~bastion.ratelimit.algorithms.Leases`).

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

The same record holds inspection strike blocks (:meth:`MemoryStore.block`), so the gate's one
check refuses both; ``ban_source`` tells the limiter which answer to give. A block keeps the
longer of itself and a ban, and never the offence number; the next ban is a repeat offence
when it starts within ``reset_after`` of the end of the client's latest penalty, whichever
started it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from bastion.ratelimit.algorithms import (
    EPSILON,
    Leases,
    SlidingLog,
    fixed_window,
    lease_members,
    quota,
    sliding_window,
)
from bastion.ratelimit.config import Algorithm
from bastion.ratelimit.core import (
    INSPECT,
    NO_PENALTY,
    RATELIMIT,
    BanLedger,
    BanRecord,
    BanRule,
    Check,
    Decision,
    Penalty,
    Rule,
    Verdict,
    merge_penalty,
)

__all__ = ["DEFAULT_MAX_KEYS", "SWEEP", "GcraBatch", "MemoryStore"]

SWEEP = 2
"""Idle buckets (or client records) examined per insertion: more than one, so the idle ones
leave faster than insertions add, and few enough to stay O(1)."""

DEFAULT_MAX_KEYS = 200_000
"""Buckets kept at most when not configured (``ratelimit.max_keys``)."""

# Decision and Verdict are named tuples: building them through tuple.__new__ skips the
# generated __new__'s argument handling (about 0.1 us instead of 0.25 us each).
_tuple_new = tuple.__new__
_RATELIMIT = RATELIMIT
_floor = math.floor

# A GCRA bucket is its tat, a float: also when it is idle (back to full). Any other bucket is
# a list [expires, *state], ``expires`` being when it is idle:
#   fixed_window    window, count
#   sliding_window  window, current, previous
#   quota           window, count
#   sliding_log     SlidingLog
#   concurrency     Leases
_EXPIRES = 0


class _Table:
    """One policy's buckets, least recently touched first, and its rule's constants."""

    __slots__ = ("algorithm", "buckets", "gcra", "interval", "plain", "rule", "tau")

    def __init__(self, rule: Rule) -> None:
        self.algorithm: Algorithm = rule.algorithm
        self.gcra = rule.algorithm == "gcra"
        self.plain = rule.algorithm not in ("sliding_log", "concurrency")
        """The state is numbers only: counting a request is replacing the bucket."""
        self.buckets: OrderedDict[str, Any] = OrderedDict()
        self.rule = rule
        self.interval = 0.0
        self.tau = 0.0
        self.adopt(rule)

    def adopt(self, rule: Rule) -> None:
        """Decide with ``rule`` from now on (same algorithm; limits may differ)."""
        self.rule = rule
        if self.gcra:
            self.interval = rule.period / rule.limit
            self.tau = self.interval * rule.burst


class GcraBatch:
    """The same GCRA checks of many requests (a plan of the stages), compiled against one
    store: per check its table and the constants deciding it needs, so a request skips the
    table look-ups. It follows the store's tables: when they change (a policy's rule adopted,
    a table replaced, the store closed), :meth:`MemoryStore.evaluate_batch` compiles it again.
    """

    __slots__ = ("checks", "generation", "slots", "store")

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = checks
        self.store: MemoryStore | None = None
        self.generation = -1
        self.slots: tuple[_Slot, ...] = ()


_Slot = tuple["OrderedDict[str, Any]", str, float, float, float, float, int, bool, _Table]
"""Buckets, key, ``interval * cost``, ``tau + EPSILON``, tau, interval, limit, enforce, and the
table holding the buckets."""


class _Client:
    """A client's ban state: its refusals and its penalty record."""

    __slots__ = ("expires", "level", "refusals", "reset_after", "source", "until")

    def __init__(self) -> None:
        self.refusals: deque[float] = deque()
        self.until = 0.0
        """End of the latest ban or strike block (0: none)."""
        self.level = 0
        """Offence number of the latest ban."""
        self.source = RATELIMIT
        """What set ``until``."""
        self.reset_after = 0.0
        """The latest ban's ``BanRule.reset_after``: how long its level outlives the record."""
        self.expires = 0.0
        """When nothing of this record matters any more (refusals aged out, ban forgiven)."""


class MemoryStore:
    """:class:`~bastion.ratelimit.core.RateLimitStore` in this process's memory."""

    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.time,
        ledger: BanLedger | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._ledger = ledger
        self._tables: dict[str, _Table] = {}
        self._generation = 0
        """Changes whenever a table is made or decides with another rule (batches follow)."""
        self._size = 0
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        # Names of leases taken without a token (Check.lease empty); NUL never starts a token.
        self._anonymous = map("\0{}".format, itertools.count()).__next__

    def __len__(self) -> int:
        """Buckets held (for metrics and tests)."""
        return self._size

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        """Decide and count one request's checks (rules in :mod:`bastion.ratelimit.core`);
        nothing is derived from the checks that ``shape`` could save."""
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
            penalised = self._penalised(client, now)
            if penalised is not None:
                return penalised
        tables = self._tables
        if len(checks) == 1:
            # One GCRA check (the built-in ``global`` alone) is most requests: decided and
            # counted without the lists the general path keeps.
            check = checks[0]
            rule = check.rule
            table = tables.get(rule.policy)
            if table is not None and table.rule is rule and table.gcra:
                buckets = table.buckets
                key = check.key
                tat = buckets.get(key, 0.0)
                interval = table.interval
                tau = table.tau
                base = tat if tat > now else now
                new_tat = base + interval * check.cost
                backlog = new_tat - now
                if backlog <= tau + EPSILON:
                    # _store, inlined: this path is most requests (about 40 ns a call, measured).
                    try:
                        buckets.move_to_end(key)
                    except KeyError:
                        self._insert(table, key, new_tat, now)
                    else:
                        buckets[key] = new_tat
                    remaining = _floor((tau - backlog + EPSILON) / interval)
                    decision = _tuple_new(Decision, (True, rule.limit, remaining, backlog, 0.0))
                    return _tuple_new(Verdict, (True, (decision,), 0.0, 0.0, 0, _RATELIMIT))
                decision = _tuple_new(Decision, (False, rule.limit, 0, base - now, backlog - tau))
                if not check.enforce:
                    return _tuple_new(Verdict, (True, (decision,), 0.0, 0.0, 0, _RATELIMIT))
                if bans is not None and client is not None:
                    return self._refused(client, bans, (decision,), now)
                return _tuple_new(Verdict, (False, (decision,), 0.0, 0.0, 0, _RATELIMIT))
        decisions: list[Decision] = []
        # What each allowing check stores if the whole request is allowed.
        counted: list[tuple[_Table, Check, Any]] = []
        allowed = True
        for check in checks:
            rule = check.rule
            table = tables.get(rule.policy)
            if table is None or table.rule is not rule:
                table = self._table(rule)
            if table.gcra:
                # algorithms.gcra, inlined: this is every request's path.
                tat = table.buckets.get(check.key, 0.0)
                interval = table.interval
                tau = table.tau
                base = tat if tat > now else now
                new_tat = base + interval * check.cost
                backlog = new_tat - now
                if backlog <= tau + EPSILON:
                    remaining = _floor((tau - backlog + EPSILON) / interval)
                    decisions.append(
                        _tuple_new(Decision, (True, rule.limit, remaining, backlog, 0.0))
                    )
                    counted.append((table, check, new_tat))
                    continue
                decisions.append(
                    _tuple_new(Decision, (False, rule.limit, 0, base - now, backlog - tau))
                )
                if check.enforce:
                    allowed = False
                continue
            ok, remaining, reset, retry, update = self._decide(table, check, now)
            decisions.append(_tuple_new(Decision, (ok, rule.limit, remaining, reset, retry)))
            if ok:
                counted.append((table, check, update))
            elif check.enforce:
                allowed = False
        if allowed:
            for table, check, update in counted:
                if table.plain:
                    self._store(table, check.key, update, now)
                else:
                    self._hold(table, check, update, now)
            return _tuple_new(Verdict, (True, tuple(decisions), 0.0, 0.0, 0, _RATELIMIT))
        if bans is not None and client is not None:
            return self._refused(client, bans, tuple(decisions), now)
        return _tuple_new(Verdict, (False, tuple(decisions), 0.0, 0.0, 0, _RATELIMIT))

    def _penalised(self, client: str, now: float) -> Verdict | None:
        """The refusal of a client under a ban or strike block, or None."""
        ledger = self._ledger
        if ledger is None:
            record = self._clients.get(client)
            if record is not None and record.until > now:
                return _tuple_new(
                    Verdict, (False, (), record.until - now, 0.0, record.level, record.source)
                )
            return None
        until, level, source = ledger.penalty(client)
        if until > now:
            return _tuple_new(Verdict, (False, (), until - now, 0.0, level, source))
        return None

    def evaluate_batch(
        self, batch: GcraBatch, client: str | None = None, bans: BanRule | None = None
    ) -> Verdict:
        """:meth:`evaluate_now` of a batch's checks, all GCRA: the same decisions, without
        looking each check's table up again."""
        if batch.store is not self or batch.generation != self._generation:
            self._compile(batch)
        now = self._clock()
        if bans is not None and client is not None:
            penalised = self._penalised(client, now)
            if penalised is not None:
                return penalised
        decisions: list[Decision] = []
        # What each allowing check stores if the whole request is allowed.
        counted: list[tuple[str, float, _Table]] = []
        allowed = True
        for buckets, key, step, most, tau, interval, limit, enforce, table in batch.slots:
            # algorithms.gcra, inlined as in evaluate_now.
            tat = buckets.get(key, 0.0)
            base = tat if tat > now else now
            new_tat = base + step
            backlog = new_tat - now
            if backlog <= most:
                remaining = _floor((tau - backlog + EPSILON) / interval)
                decisions.append(_tuple_new(Decision, (True, limit, remaining, backlog, 0.0)))
                counted.append((key, new_tat, table))
                continue
            decisions.append(_tuple_new(Decision, (False, limit, 0, base - now, backlog - tau)))
            if enforce:
                allowed = False
        if allowed:
            for key, new_tat, table in counted:
                self._store(table, key, new_tat, now)
            return _tuple_new(Verdict, (True, tuple(decisions), 0.0, 0.0, 0, _RATELIMIT))
        if bans is not None and client is not None:
            return self._refused(client, bans, tuple(decisions), now)
        return _tuple_new(Verdict, (False, tuple(decisions), 0.0, 0.0, 0, _RATELIMIT))

    def _compile(self, batch: GcraBatch) -> None:
        slots: list[_Slot] = []
        for check in batch.checks:
            rule = check.rule
            if rule.algorithm != "gcra":
                raise ValueError(f"policy {rule.policy!r}: a batch holds GCRA checks only")
            table = self._tables.get(rule.policy)
            if table is None or table.rule is not rule:
                table = self._table(rule)
            step = table.interval * check.cost
            slots.append(
                (
                    table.buckets,
                    check.key,
                    step,
                    table.tau + EPSILON,
                    table.tau,
                    table.interval,
                    rule.limit,
                    check.enforce,
                    table,
                )
            )
        batch.slots = tuple(slots)
        batch.store = self
        batch.generation = self._generation

    def _decide(
        self, table: _Table, check: Check, now: float
    ) -> tuple[bool, int, float, float, Any]:
        """Every algorithm but GCRA: ``(allowed, remaining, reset, retry_after, update)``."""
        rule = check.rule
        algorithm = rule.algorithm
        cost, limit, period = check.cost, rule.limit, rule.period
        bucket: list[Any] | None = table.buckets.get(check.key)
        if algorithm == "sliding_window":
            state = bucket if bucket is not None else _NEW_SLIDING
            ok, window, current, previous, remaining, reset, retry = sliding_window(
                state[1], state[2], state[3], now, cost, limit, period
            )
            return ok, remaining, reset, retry, [now + reset, window, current, previous]
        if algorithm == "fixed_window":
            state = bucket if bucket is not None else _NEW_FIXED
            ok, window, count, remaining, reset, retry = fixed_window(
                state[1], state[2], now, cost, limit, period
            )
            return ok, remaining, reset, retry, [now + reset, window, count]
        if algorithm == "quota":
            if check.window is None:
                raise ValueError(f"policy {rule.policy!r}: a quota check needs Check.window")
            state = bucket if bucket is not None else _NEW_QUOTA
            ok, window, end, count, remaining, reset, retry = quota(
                state[1], state[2], state[0], check.window, now, cost, limit, period
            )
            return ok, remaining, reset, retry, [end, window, count]
        if algorithm == "sliding_log":
            log: SlidingLog = bucket[1] if bucket is not None else SlidingLog()
            log.prune(now, period)
            ok, remaining, reset, retry = log.decide(now, cost, limit, period)
            return ok, remaining, reset, retry, log
        if algorithm == "concurrency":
            leases: Leases = bucket[1] if bucket is not None else Leases()
            leases.reclaim(now)
            ok, remaining, reset, retry = leases.decide(now, cost, limit, period)
            return ok, remaining, reset, retry, leases
        raise ValueError(f"policy {rule.policy!r}: unknown algorithm {algorithm!r}")

    def _hold(self, table: _Table, check: Check, state: Any, now: float) -> None:
        """Count an allowed check of a log or of leases: add its entry, most recently touched
        last."""
        period = check.rule.period
        if isinstance(state, SlidingLog):
            state.add(now, check.cost)
            expires = now + period
        else:
            leases: Leases = state
            leases.acquire(
                now, check.cost, period, lease_members(check.lease, check.cost, self._anonymous)
            )
            expires = leases.expires()
        buckets = table.buckets
        key = check.key
        bucket = buckets.get(key)
        if bucket is not None:
            bucket[_EXPIRES] = expires
            buckets.move_to_end(key)
        else:
            self._insert(table, key, [expires, state], now)

    def _store(self, table: _Table, key: str, bucket: Any, now: float) -> None:
        """Set a bucket's new state and mark it as just used; a new one goes through
        :meth:`_insert`."""
        buckets = table.buckets
        try:
            buckets.move_to_end(key)
        except KeyError:
            self._insert(table, key, bucket, now)
        else:
            buckets[key] = bucket

    def _insert(self, table: _Table, key: str, bucket: Any, now: float) -> None:
        """Add a new bucket, after sweeping idle ones and within ``max_keys``."""
        buckets = table.buckets
        # Only an insertion grows memory, so sweeping here keeps pace with it at O(1) a call.
        for _ in range(SWEEP):
            if not buckets:
                break
            oldest = next(iter(buckets))
            value = buckets[oldest]
            if (value if table.gcra else value[_EXPIRES]) > now:
                break
            del buckets[oldest]
            self._size -= 1
        buckets[key] = bucket
        self._size += 1
        if self._size > self._max_keys:
            self._evict(table)

    def _evict(self, growing: _Table) -> None:
        """Make room for a bucket just added to ``growing``.

        A policy holding more than its share (``max_keys`` divided among the policies) gives up
        its own least recently touched bucket, so a flood of new keys on one policy (clients
        choosing ``header:`` values, spoofed addresses) only churns that policy's buckets.
        Otherwise the room is taken from the largest table, which then holds more than its
        share: other policies' buckets are never the price of one policy's growth."""
        victim = growing
        tables = self._tables
        if len(growing.buckets) <= self._max_keys // len(tables):
            victim = max(tables.values(), key=_table_size)
        if victim.buckets:
            victim.buckets.popitem(last=False)
            self._size -= 1

    def _table(self, rule: Rule) -> _Table:
        """The table of ``rule``'s policy, deciding with ``rule``; a policy whose algorithm
        changed starts afresh."""
        self._generation += 1
        table = self._tables.get(rule.policy)
        if table is not None and table.algorithm == rule.algorithm:
            table.adopt(rule)
            return table
        if table is not None:
            self._size -= len(table.buckets)
        table = self._tables[rule.policy] = _Table(rule)
        return table

    # -- bans -------------------------------------------------------------------------------

    def penalty(self, client: str) -> Penalty:
        """The client's latest ban or strike block: with a ledger, the ledger's alone (it
        mirrors this process's records at once and everyone else's within its poll), so a lift
        made anywhere (``bastion bans lift``) ends it here too."""
        if self._ledger is not None:
            return self._ledger.penalty(client)
        record = self._clients.get(client)
        if record is None or not record.until:
            return NO_PENALTY
        return Penalty(record.until, record.level, record.source)

    def block(self, client: str, until: float) -> None:
        """Block ``client`` until ``until`` (epoch seconds) for its inspection strikes: its
        penalty record (and the ledger's) keeps the longer of a ban and the block, and its
        offence level (:func:`~bastion.ratelimit.core.merge_penalty`)."""
        if self._ledger is not None:
            # The level is not the block's to set: the ledger keeps the record's.
            self._ledger.record(client, until=until, level=0, source=INSPECT)
            return
        current = self.penalty(client)
        merged = merge_penalty(current if current.until else None, until, 0, INSPECT)
        record = self._clients.get(client)
        if record is None:
            record = self._clients[client] = _Client()
            if len(self._clients) > self._max_keys:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        record.until, record.level, record.source = merged
        # A level is remembered reset_after past the end of the latest penalty, a block's too.
        kept = merged.until + record.reset_after if merged.level else merged.until
        record.expires = max(record.expires, kept)

    def _refused(
        self, client: str, bans: BanRule, decisions: tuple[Decision, ...], now: float
    ) -> Verdict:
        """Count a refusal; the ``threshold``-th within the window starts a ban (never with a
        threshold of 0: :data:`~bastion.ratelimit.core.PENALTIES_ONLY`)."""
        if not bans.threshold:
            return _tuple_new(Verdict, (False, decisions, 0.0, 0.0, 0, _RATELIMIT))
        previous_until, previous_level, _ = self.penalty(client)
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
            return _tuple_new(Verdict, (False, decisions, 0.0, 0.0, 0, _RATELIMIT))
        repeat = previous_until > 0.0 and now - previous_until <= bans.reset_after
        level = previous_level + 1 if repeat else 1
        duration = bans.durations[min(level, len(bans.durations)) - 1]
        record.until = now + duration
        record.level = level
        record.source = RATELIMIT
        record.reset_after = bans.reset_after
        record.expires = record.until + bans.reset_after
        refusals.clear()
        if self._ledger is not None:
            self._ledger.record(client, until=record.until, level=level)
        return _tuple_new(Verdict, (False, decisions, 0.0, duration, level, _RATELIMIT))

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
        """:meth:`release` without the coroutine: each check frees the leases recorded under
        its ``lease`` token (none once they lapsed), or without a token its bucket's ``cost``
        oldest leases."""
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
            leases: Leases = bucket[1]
            leases.release(check.cost, check.lease)
            # Empty: idle now, so the next sweep may drop it.
            bucket[_EXPIRES] = leases.expires()

    async def active_bans(self) -> list[BanRecord]:
        """Clients this process banned or blocked whose penalty is not over (the ledger lists
        everyone's)."""
        now = self._clock()
        return [
            BanRecord(client, record.until, record.level, record.source)
            for client, record in self._clients.items()
            if record.until > now
        ]

    async def lift(self, client: str) -> bool:
        """Forget the client: its ban or strike block, refusals and offence number (a later
        ban is offence 1 again, as after a lift in the ledger). A record in the ledger is
        lifted there (``SqlBanLedger.lift``), which every process then follows. False when
        this process held no ban for it."""
        record = self._clients.pop(client, None)
        return record is not None and record.until > self._clock()

    async def close(self) -> None:
        """Forget every bucket and ban."""
        self._tables.clear()
        self._generation += 1
        self._clients.clear()
        self._size = 0


def _table_size(table: _Table) -> int:
    return len(table.buckets)


# The state a new bucket starts from (window ids no real window has).
_NEW_SLIDING: list[Any] = [0.0, -1, 0, 0]
_NEW_FIXED: list[Any] = [0.0, -1, 0]
_NEW_QUOTA: list[Any] = [0.0, None, 0]

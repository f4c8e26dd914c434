"""The rate-limit algorithms as plain arithmetic, shared by every store.

Each algorithm is one function (or, for the two that keep a list, one small class) over a
bucket's state and the request: ``now`` (seconds), ``cost``, and the rule's ``limit``,
``period`` (seconds) and ``burst``. A function only *decides*: it returns whether the request
fits, the header values, and the state to store *if* the request is counted. The store writes
that state only when the whole request is allowed (see :mod:`bastion.ratelimit.core`), so a
refused request never changes a bucket. The Redis store's Lua script mirrors these functions
line by line; the state is a few numbers (or a sorted set for the two logs) so the port is
direct.

Every decision reports, as in :class:`~bastion.ratelimit.core.Decision`:

- ``remaining``: cost units still available *after* this request (0 when refused);
- ``reset``: seconds until the bucket is back to full (idle), given what it holds after this
  request; also how long the store must keep the bucket (its expiry);
- ``retry_after``: 0 when allowed; when refused, seconds until this same request would be
  allowed if nothing else arrives.

A request whose cost exceeds what the bucket can ever hold (``cost > burst`` for GCRA,
``cost > limit`` for the others) is never allowed; the retry time each algorithm reports for it
is documented on the function, and the configuration refuses such policies
(:class:`~bastion.ratelimit.config.PolicyConfig`).

Float comparisons of amounts tolerate :data:`EPSILON`: epoch times near 1.7e9 carry about
2.4e-7 s of rounding, and GCRA adds ``period / limit`` per request, so exact comparisons would
refuse a request sitting exactly on a boundary.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

__all__ = [
    "EPSILON",
    "Leases",
    "SlidingLog",
    "fixed_window",
    "gcra",
    "lease_members",
    "quota",
    "sliding_window",
]

EPSILON = 1e-6
"""Tolerance of every ``<=`` on seconds (GCRA) or on estimated counts (sliding window), also
added before each ``floor`` that turns an amount into ``remaining``."""

_floor = math.floor


def gcra(
    tat: float, now: float, cost: int, limit: int, period: float, burst: int
) -> tuple[bool, float, int, float, float]:
    """Generic cell rate algorithm: a bucket of depth ``burst`` refilled at ``limit / period``.

    State: ``tat``, the theoretical arrival time (0 for a new bucket); the bucket is full when
    ``tat <= now``. With the emission interval ``T = period / limit`` and ``tau = T * burst``:

    - ``new_tat = max(tat, now) + T * cost``; allowed iff ``new_tat - now <= tau + EPSILON``;
    - allowed: ``remaining = floor((tau - (new_tat - now) + EPSILON) / T)``,
      ``reset = new_tat - now``, ``retry_after = 0``; store ``tat = new_tat``;
    - refused: ``remaining = 0``, ``reset = max(tat, now) - now``,
      ``retry_after = (new_tat - now) - tau``.

    ``cost > burst`` never fits: its ``retry_after`` (by the same formula) is the time until
    the bucket is full plus the excess ``T * (cost - burst)``, always > 0.

    Returns ``(allowed, new_tat, remaining, reset, retry_after)``.
    """
    interval = period / limit
    tau = interval * burst
    base = tat if tat > now else now
    new_tat = base + interval * cost
    backlog = new_tat - now
    if backlog <= tau + EPSILON:
        return True, new_tat, _floor((tau - backlog + EPSILON) / interval), backlog, 0.0
    return False, new_tat, 0, base - now, backlog - tau


def fixed_window(
    window: int, count: int, now: float, cost: int, limit: int, period: float
) -> tuple[bool, int, int, int, float, float]:
    """Fixed window: at most ``limit`` cost units per aligned window ``[k*P, (k+1)*P)``.

    State: ``(window, count)``, the id ``floor(now / period)`` of the window counted and its
    count; a stored id other than the current one counts as 0.

    - allowed iff ``count + cost <= limit``; then store ``count + cost``;
    - ``remaining = limit - count - cost`` (allowed) or 0;
    - ``reset = (window + 1) * period - now`` (the window's end), allowed or not;
    - ``retry_after = reset`` when refused (when ``cost > limit`` the next window refuses too).

    Returns ``(allowed, window, new_count, remaining, reset, retry_after)``.
    """
    current = _floor(now / period)
    if window != current:
        count = 0
    reset = (current + 1) * period - now
    if count + cost <= limit:
        return True, current, count + cost, limit - count - cost, reset, 0.0
    return False, current, count, 0, reset, reset


def sliding_window(
    window: int, current: int, previous: int, now: float, cost: int, limit: int, period: float
) -> tuple[bool, int, int, int, int, float, float]:
    """Sliding window counter (two-window approximation, as Cloudflare describes it).

    State: ``(window, current, previous)``: the id ``floor(now / period)`` of the window whose
    count is ``current`` and the count of the window before it. On access the state rolls: one
    window later ``previous, current = current, 0``; two or more, both are 0.

    With ``f = (now - window * period) / period`` (elapsed fraction of the current window) the
    estimate of the last ``period`` is ``previous * (1 - f) + current``:

    - allowed iff ``estimate + cost <= limit + EPSILON``; then store ``current + cost``;
    - ``remaining = floor(limit - estimate - cost + EPSILON)`` (allowed) or 0;
    - ``reset``: until the estimate is 0: the end of the *next* window when ``current`` (after
      this request) is > 0, else the end of this window when ``previous`` > 0, else 0;
    - ``retry_after`` when refused: if ``current + cost <= limit`` and ``previous`` > 0, the
      previous window's weight must fall to ``(limit - cost - current) / previous``:
      ``(1 - (limit - cost - current) / previous - f) * period``; otherwise the request waits
      for the next window, where ``current`` becomes the previous count and must fall to
      ``limit - cost``: ``(1 - f + g) * period`` with ``g = 0`` when
      ``current <= limit - cost``, else ``g = 1 - (limit - cost) / current``.
      ``cost > limit`` never fits: ``retry_after = period``.

    Returns ``(allowed, window, new_current, previous, remaining, reset, retry_after)``.
    """
    now_window = _floor(now / period)
    if window != now_window:
        previous = current if window == now_window - 1 else 0
        current = 0
    elapsed = (now - now_window * period) / period
    estimate = previous * (1.0 - elapsed) + current
    if estimate + cost <= limit + EPSILON:
        remaining = _floor(limit - estimate - cost + EPSILON)
        reset = (now_window + 2) * period - now
        return True, now_window, current + cost, previous, remaining, reset, 0.0
    if current > 0:
        reset = (now_window + 2) * period - now
    elif previous > 0:
        reset = (now_window + 1) * period - now
    else:
        reset = 0.0
    if cost > limit:
        retry_after = period
    elif previous > 0 and current + cost <= limit:
        retry_after = (1.0 - (limit - cost - current) / previous - elapsed) * period
    else:
        weight = 0.0 if current <= limit - cost else 1.0 - (limit - cost) / current
        retry_after = (1.0 - elapsed + weight) * period
    return False, now_window, current, previous, 0, reset, retry_after


def quota(
    window: int | None,
    count: int,
    end: float,
    request_window: int,
    now: float,
    cost: int,
    limit: int,
    period: float,
) -> tuple[bool, int, float, int, int, float, float]:
    """Calendar quota: a fixed window whose id the caller computes (``Check.window``, e.g. the
    day in the policy's time zone) and whose ``period`` is the time left until it ends.

    State: ``(window, count, end)``; a new bucket (``window`` None) or one whose ``end`` is
    reached (the bucket expires then) holds nothing. Against a live bucket:

    - a greater ``request_window`` starts a new count with ``end = now + period`` (the first
      request of a window fixes its end);
    - a smaller one is counted in the bucket's window, count and end: instances whose clocks
      disagree around midnight must not reset the count back and forth, so the newest window
      any of them saw wins;
    - an empty bucket starts counting ``request_window`` with ``end = now + period``.

    Then: allowed iff ``count + cost <= limit``, storing ``count + cost``;
    ``remaining = limit - count - cost`` (allowed) or 0; ``reset = max(end - now, 0)``;
    ``retry_after = reset`` when refused.

    Returns ``(allowed, window, end, new_count, remaining, reset, retry_after)``.
    """
    if window is None or now >= end or window < request_window:
        count = 0
        end = now + period
    elif window > request_window:
        request_window = window
    reset = end - now if end > now else 0.0
    if count + cost <= limit:
        return True, request_window, end, count + cost, limit - count - cost, reset, 0.0
    return False, request_window, end, count, 0, reset, reset


class SlidingLog:
    """Exact sliding log: every counted request's ``(time, cost)`` within the last ``period``.

    An entry made at ``t`` counts while ``now < t + period``; so in any window
    ``[s, s + period)`` the allowed cost never exceeds ``limit``. In Redis: a sorted set scored
    by time (member ``time:sequence:cost``) plus a running total.

    - allowed iff ``total + cost <= limit``, ``total`` being the cost of entries still counting;
      then the entry ``(now, cost)`` is appended;
    - ``remaining = limit - total - cost`` (allowed) or 0;
    - ``reset``: until the newest entry leaves: ``period`` when allowed, else
      ``newest + period - now`` (0 when empty);
    - ``retry_after`` when refused: until the oldest entries whose costs add up to
      ``total + cost - limit`` have left: ``that entry's time + period - now``;
      ``cost > limit`` never fits: ``retry_after = period``.
    """

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        """Oldest first."""
        self.total = 0
        """Sum of the entries' costs."""

    def prune(self, now: float, period: float) -> None:
        """Drop the entries no longer counting at ``now`` (not a consumption: any access may)."""
        entries = self.entries
        horizon = now - period
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def decide(
        self, now: float, cost: int, limit: int, period: float
    ) -> tuple[bool, int, float, float]:
        """``(allowed, remaining, reset, retry_after)``; call :meth:`prune` first."""
        total = self.total
        if total + cost <= limit:
            return True, limit - total - cost, period, 0.0
        entries = self.entries
        reset = entries[-1][0] + period - now if entries else 0.0
        if cost > limit:
            return False, 0, reset, period
        needed = total + cost - limit
        freed = 0
        for when, units in entries:
            freed += units
            if freed >= needed:
                return False, 0, reset, when + period - now
        raise AssertionError("a refused request always has enough entries to free")

    def add(self, now: float, cost: int) -> None:
        """Count an allowed request."""
        self.entries.append((now, cost))
        self.total += cost

    def expires(self, period: float) -> float:
        """When the log is empty again (the newest entry leaves); 0 when empty."""
        return self.entries[-1][0] + period if self.entries else 0.0


class Leases:
    """Concurrency: requests in flight, each holding ``cost`` slots until released.

    State: one lease per held slot, named by its request's token (``Check.lease``; for cost
    ``c`` the members ``token#1`` … ``token#c``) with its expiry, ``acquire time + period`` —
    in Redis a sorted set scored by expiry. Leases past their expiry are reclaimed on access,
    so a request whose release never comes (a crashed worker) frees its slots after ``period``.
    A release removes the request's own members: once its leases lapsed and were reclaimed it
    frees nothing, so it can never free the slot of a request still running. A request without
    a token gets anonymous members; a release without a token removes the ``cost`` oldest
    leases (the behaviour before tokens existed).

    - allowed iff ``in_flight + cost <= limit``; then ``cost`` leases expiring at
      ``now + period`` are added (a token already holding them is renewed, not added twice);
    - ``remaining = limit - in_flight - cost`` (allowed) or 0;
    - ``reset``: until the newest lease expires (the latest all slots are free again even if no
      release comes): ``period`` when allowed, else ``newest - now`` (0 when empty);
    - ``retry_after`` when refused: until enough leases expire, ``expiry of the
      (in_flight + cost - limit)-th oldest lease - now`` (an upper bound: releases usually come
      sooner); ``cost > limit`` never fits: ``retry_after = period``.
    """

    __slots__ = ("expiries", "newest")

    def __init__(self) -> None:
        self.expiries: OrderedDict[str, float] = OrderedDict()
        """Member -> expiry, in acquisition order (expiry order while the period is fixed)."""
        self.newest = 0.0
        """No lease held expires later (0: none held); kept cheaply, so it may be later than
        the newest lease after a release, which only keeps the bucket a little longer."""

    def reclaim(self, now: float) -> None:
        """Drop the leases expired at ``now``."""
        expiries = self.expiries
        while expiries:
            member = next(iter(expiries))
            if expiries[member] > now:
                return
            del expiries[member]
        self.newest = 0.0

    def decide(
        self, now: float, cost: int, limit: int, period: float
    ) -> tuple[bool, int, float, float]:
        """``(allowed, remaining, reset, retry_after)``; call :meth:`reclaim` first."""
        held = len(self.expiries)
        if held + cost <= limit:
            return True, limit - held - cost, period, 0.0
        ordered = sorted(self.expiries.values())
        reset = ordered[-1] - now if ordered else 0.0
        if cost > limit:
            return False, 0, reset, period
        return False, 0, reset, ordered[held + cost - limit - 1] - now

    def acquire(self, now: float, cost: int, period: float, members: Sequence[str]) -> None:
        """Hold ``cost`` slots for an allowed request, one per member (:func:`lease_members`)."""
        expiry = now + period
        expiries = self.expiries
        for member in members:
            expiries[member] = expiry
            expiries.move_to_end(member)
        if expiry > self.newest:
            self.newest = expiry

    def release(self, cost: int, token: str) -> None:
        """Give back the request's slots: the members of ``token``, else (no token) the
        ``cost`` oldest leases; what is not held any more is ignored."""
        expiries = self.expiries
        if token:
            for unit in range(1, cost + 1):
                expiries.pop(f"{token}#{unit}", None)
        else:
            for _ in range(min(cost, len(expiries))):
                expiries.popitem(last=False)
        if not expiries:
            self.newest = 0.0

    def expires(self) -> float:
        """When the newest lease expires at the latest; 0 when none is held."""
        return self.newest


def lease_members(token: str, cost: int, anonymous: Callable[[], str]) -> list[str]:
    """The members naming a request's ``cost`` leases: ``token#1`` … ``token#cost``, or without
    a token ``cost`` names from ``anonymous`` (each unique)."""
    if token:
        return [f"{token}#{unit}" for unit in range(1, cost + 1)]
    return [anonymous() for _ in range(cost)]

"""What every rate-limit store implements and what the stages hand it.

A request's matching policies become :class:`Check` s; a store evaluates all of them (and the
client's ban state) in one atomic step and returns a :class:`Verdict`. The rules are the same
for every backend, so one test suite runs over all of them:

1. If ``bans`` is given and the client is banned, nothing is counted: ``banned_for > 0``.
2. Every check is decided against its bucket *before* anything is consumed.
3. The request is allowed when every enforced check allows it (shadow checks never refuse).
4. Allowed: every check that allowed it consumes ``cost`` (shadow ones too). Refused: nothing
   is consumed, and with ``bans`` the client's refusal count grows; reaching
   ``BanRule.threshold`` within ``BanRule.window`` bans it for the next duration
   (``new_ban``).

Times are seconds as floats. The store's clock decides (Redis ``TIME`` for Redis), so several
instances with skewed clocks agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from bastion.ratelimit.config import Algorithm

__all__ = [
    "BanLedger",
    "BanRecord",
    "BanRule",
    "Check",
    "Decision",
    "RateLimitStore",
    "RateLimitStoreError",
    "Rule",
    "Verdict",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """The part of a policy a store needs: how to count."""

    policy: str
    algorithm: Algorithm
    limit: int
    period: float
    """Seconds. For ``quota`` the length of the current calendar window (see ``Check.window``);
    for ``concurrency`` how long a slot is kept if its release never comes (a crashed worker)."""
    burst: int
    """``gcra``: requests allowed at once (the bucket's depth). Others: equal to ``limit``."""


@dataclass(frozen=True, slots=True)
class Check:
    """One policy applied to one request."""

    rule: Rule
    key: str
    """The bucket, e.g. ``global|ip:203.0.113.7``; the store adds its own prefix."""
    cost: int = 1
    enforce: bool = True
    """False for shadow mode: counted and reported, never refusing."""
    window: int | None = None
    """``quota`` only: the calendar window's id (e.g. ``20261201``), computed by the caller in
    the policy's time zone. A greater id starts a new count; a smaller one than the bucket's is
    counted in the bucket's window (an instance whose clock is behind never resets a count)."""
    lease: str = ""
    """``concurrency`` only: a token unique to the request and policy (``<request id>:<policy>``)
    under which the store records the slots it grants, so :meth:`RateLimitStore.release` frees
    exactly this request's slots. Empty: the slots are anonymous and a release frees the
    bucket's oldest ones (a request whose lease lapsed could then free a running one's)."""


class Decision(NamedTuple):
    """One check's outcome, for the ``RateLimit`` headers.

    A named tuple because the stores build one per check per request: ``tuple.__new__(Decision,
    (...))`` costs a third of a frozen dataclass's ``__init__``. Read it by field name."""

    allowed: bool
    limit: int
    remaining: int
    """Cost units still available after this request (0 when refused)."""
    reset: float
    """Seconds until the bucket is back to full (window end for window algorithms)."""
    retry_after: float
    """Seconds until this request would be allowed; 0 when allowed."""


class Verdict(NamedTuple):
    """The outcome of one request's checks (a named tuple, like :class:`Decision`)."""

    allowed: bool
    decisions: tuple[Decision, ...]
    """One per check, in the order given; empty when the client is banned."""
    banned_for: float = 0.0
    """Seconds left of the client's ban; > 0 means refused without counting."""
    new_ban: float = 0.0
    """> 0 when this refusal started a ban of that many seconds."""
    ban_level: int = 0
    """Which offence the ban is (1 = first duration)."""


@dataclass(frozen=True, slots=True)
class BanRule:
    """Progressive bans: ``threshold`` refusals within ``window`` → ``durations[level]``."""

    threshold: int
    window: float
    durations: tuple[float, ...]
    reset_after: float
    """A client not banned for this long starts again at the first duration."""


@dataclass(frozen=True, slots=True)
class BanRecord:
    """An active ban, for ``bastion bans list``."""

    client: str
    until: float
    """Epoch seconds."""
    level: int


class BanLedger(Protocol):
    """Shares bans between processes whose counters are not shared (memory store, several
    workers or instances, no Redis): the SQL store records them and every process mirrors them.
    Both methods are synchronous and cheap: they read and write an in-process mirror; the
    ledger writes to (and refreshes from) the database in the background."""

    def banned_until(self, client: str) -> tuple[float, int]:
        """``(until, level)`` of the client's current or latest ban (``(0.0, 0)``: none)."""
        ...

    def record(self, client: str, *, until: float, level: int) -> None:
        """A process started a ban; durable and visible to the others shortly."""
        ...


class RateLimitStoreError(Exception):
    """The shared store failed (unreachable, timed out, script error); the policy's
    ``on_store_error`` decides what happens."""


class RateLimitStore(Protocol):
    """Counters and bans: per process (memory) or shared (Redis)."""

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
    ) -> Verdict:
        """Decide and count one request's checks atomically (rules in the module docstring)."""
        ...

    async def release(self, checks: Sequence[Check]) -> None:
        """Give back the slots of ``concurrency`` checks an allowed request held: those recorded
        under each check's ``lease`` (none when they already lapsed), or with an empty lease the
        bucket's ``cost`` oldest slots."""
        ...

    async def active_bans(self) -> list[BanRecord]:
        """Clients banned now."""
        ...

    async def lift(self, client: str) -> bool:
        """End a client's ban (and forget its refusals); False when it was not banned."""
        ...

    async def close(self) -> None: ...

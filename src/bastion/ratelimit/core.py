"""What every rate-limit store implements and what the stages hand it.

A request's matching policies become :class:`Check` s; a store evaluates all of them (and the
client's ban state) in one atomic step and returns a :class:`Verdict`. The rules are the same
for every backend, so one test suite runs over all of them:

1. If ``bans`` is given and the client has an active penalty record (a rate-limit ban or an
   inspection strike block: one record per client), nothing is counted: ``banned_for > 0``
   and ``ban_source`` says which started it.
2. Every check is decided against its bucket *before* anything is consumed.
3. The request is allowed when every enforced check allows it (shadow checks never refuse).
4. Allowed: every check that allowed it consumes ``cost`` (shadow ones too). Refused: nothing
   is consumed, and with ``bans`` the client's refusal count grows; reaching
   ``BanRule.threshold`` within ``BanRule.window`` bans it for the next duration
   (``new_ban``). A rule whose threshold is 0 (:data:`PENALTIES_ONLY`) checks the record and
   never counts refusals.

Penalty records merge by :func:`merge_penalty`: the longer penalty decides the end and the
source; only a rate-limit ban sets the offence level, so inspection strikes never raise it.

Times are seconds as floats. The store's clock decides (Redis ``TIME`` for Redis), so several
instances with skewed clocks agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

from bastion.ratelimit.config import Algorithm

__all__ = [
    "INSPECT",
    "NO_PENALTY",
    "PENALTIES_ONLY",
    "RATELIMIT",
    "BanLedger",
    "BanRecord",
    "BanRule",
    "BanSource",
    "Check",
    "Decision",
    "Penalty",
    "RateLimitStore",
    "RateLimitStoreError",
    "Rule",
    "Verdict",
    "merge_penalty",
]

BanSource = Literal["ratelimit", "inspect"]
"""What started a client's penalty: a rate-limit ban or an inspection strike block."""
RATELIMIT: Final = "ratelimit"
"""Source of a ban started by repeated rate-limit refusals (429 ``client_banned``)."""
INSPECT: Final = "inspect"
"""Source of a block started by inspection strikes (403 ``client_blocked``)."""


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
    ban_source: str = RATELIMIT
    """With ``banned_for``: what started the penalty (:data:`RATELIMIT` or :data:`INSPECT`)."""


@dataclass(frozen=True, slots=True)
class BanRule:
    """Progressive bans: ``threshold`` refusals within ``window`` → ``durations[level]``."""

    threshold: int
    window: float
    durations: tuple[float, ...]
    reset_after: float
    """A client not banned for this long starts again at the first duration."""


PENALTIES_ONLY = BanRule(threshold=0, window=0.0, durations=(), reset_after=0.0)
"""The gate's rule when rate-limit bans are off but inspection strikes are on: the client's
penalty record is checked, refusals never start a ban."""


class Penalty(NamedTuple):
    """A client's penalty record: its current or latest ban or strike block."""

    until: float
    """When it ends (epoch seconds); 0.0: no record."""
    level: int
    """Rate-limit offence number of the latest ban (1 = first duration; 0: none yet)."""
    source: str
    """What set ``until``: :data:`RATELIMIT` or :data:`INSPECT`."""


NO_PENALTY = Penalty(0.0, 0, RATELIMIT)
"""The record of a client never banned nor blocked."""


def merge_penalty(current: Penalty | None, until: float, level: int, source: str) -> Penalty:
    """A client's record after a new ban or block: the longer of the two decides the end and
    the source; the level is the new ban's, while a strike block (``source`` :data:`INSPECT`)
    keeps the record's level, so strikes never raise the rate-limit escalation."""
    if source == INSPECT:
        level = current.level if current is not None else 0
    if current is not None and current.until > until:
        return Penalty(current.until, level, current.source)
    return Penalty(until, level, source)


@dataclass(frozen=True, slots=True)
class BanRecord:
    """An active ban or strike block, for ``bastion bans list``."""

    client: str
    until: float
    """Epoch seconds."""
    level: int
    source: str = RATELIMIT
    """:data:`RATELIMIT` or :data:`INSPECT`."""


class BanLedger(Protocol):
    """Shares penalty records between processes whose counters are not shared (memory store,
    several workers or instances, no Redis): the SQL store records them and every process
    mirrors them. Both methods are synchronous and cheap: they read and write an in-process
    mirror; the ledger writes to (and refreshes from) the database in the background."""

    def penalty(self, client: str) -> Penalty:
        """The client's current or latest record (``until`` 0.0: none)."""
        ...

    def record(self, client: str, *, until: float, level: int, source: str = RATELIMIT) -> None:
        """A process started a ban or a strike block; merged into the client's record by
        :func:`merge_penalty`, durable and visible to the others shortly."""
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
        shape: object | None = None,
    ) -> Verdict:
        """Decide and count one request's checks atomically (rules in the module docstring).

        ``shape``, when given, stands for ``checks``, ``client`` and ``bans`` together for as
        long as it lives (a static :class:`~bastion.ratelimit.policies.RequestPlan`): a store
        may key what it derives from them on it instead of on the checks."""
        ...

    async def release(self, checks: Sequence[Check]) -> None:
        """Give back the slots of ``concurrency`` checks an allowed request held: those recorded
        under each check's ``lease`` (none when they already lapsed), or with an empty lease the
        bucket's ``cost`` oldest slots."""
        ...

    async def active_bans(self) -> list[BanRecord]:
        """Clients banned or blocked now, with the source of each record."""
        ...

    async def lift(self, client: str) -> bool:
        """End a client's ban or strike block (and forget its refusals and offence level);
        False when it had none."""
        ...

    async def close(self) -> None: ...

"""Strikes: a client whose requests keep being blocked is refused for a while (403
``client_blocked``), in every process and instance.

A client is the rate limiter's bucket of its address (aggregated to ``ratelimit.ipv4_prefix`` /
``ipv6_prefix``, as the gate counts it) and, when the request was authenticated, its principal
(``user:<id>``). Each blocked request is a strike against both; ``threshold`` strikes within
``window`` refuse that client for ``duration``. Two backends:

- ``RedisStrikes`` (:mod:`bastion.inspect.strikes_redis`; ``store.redis_url`` set and
  ``ratelimit.store`` not ``memory``, the rule ``bastion bans`` follows): one small script
  per blocked request (``INCR`` + ``PEXPIRE`` the count, ``SET PX`` the block, index the block
  for ``bans list``), one ``PTTL`` per check. Counts and blocks are shared at once.
- :class:`LedgerStrikes` (no Redis): counts in this process, blocks in the SQL ban ledger
  (``source = "inspect"``) every process mirrors, so a block holds everywhere within the
  ledger's poll interval and a check is a dict lookup.

Blocks are named ``strike:<client>`` in ``bastion bans list`` and ``bans lift``; the names never
collide with the rate limiter's ban of the same address, which keeps its own record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bastion.inspect.config import StrikesConfig
from bastion.ratelimit.ledger import StoredBan

__all__ = [
    "REDIS_PREFIX",
    "SOURCE",
    "STRIKE_PREFIX",
    "LedgerStrikes",
    "LocalLedger",
    "StrikeLedger",
    "StrikeStore",
    "strike_name",
]

STRIKE_PREFIX = "strike:"
"""Prefix of a struck client's name in the ban ledger and in ``bastion bans``."""
REDIS_PREFIX = "bastion:strike:"
"""Prefix of every strike key in Redis: ``count:<client>``, ``block:<client>``, ``blocked``
(the index of blocked clients scored by the block's end in epoch milliseconds)."""
SOURCE = "inspect"
"""The ``source`` of strike rows in ``bastion_bans``."""

_MAX_COUNTED = 100_000
"""Clients whose strikes one process counts at most (without Redis); beyond, the oldest go."""


def strike_name(client: str) -> str:
    """``strike:<client>``: how a block is named in the ledger and in ``bastion bans``."""
    return client if client.startswith(STRIKE_PREFIX) else STRIKE_PREFIX + client


class StrikeStore(Protocol):
    """Where strikes are counted and blocks kept."""

    async def blocked_for(self, client: str) -> float:
        """Seconds the client is still refused (0: not blocked)."""
        ...

    async def strike(self, clients: Sequence[str]) -> list[str]:
        """Count one blocked request against each client; the clients it blocked."""
        ...

    async def active(self) -> list[StoredBan]:
        """Blocks in force, as ``strike:<client>`` records."""
        ...

    async def lift(self, client: str) -> bool:
        """End a block (``client`` with or without ``strike:``); False when there was none."""
        ...


class StrikeLedger(Protocol):
    """What :class:`LedgerStrikes` needs of a ban ledger (``SqlBanLedger`` is one)."""

    def banned_until(self, client: str) -> tuple[float, int]: ...

    def record(self, client: str, *, until: float, level: int, source: str = ...) -> None: ...

    async def active(self) -> Sequence[Any]: ...

    async def lift(self, client: str) -> bool: ...


class LocalLedger:
    """Blocks kept in this process only: for an engine without a database (unit tests)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def banned_until(self, client: str) -> tuple[float, int]:
        until = self._until.get(client, 0.0)
        return (until, 1) if until else (0.0, 0)

    def record(self, client: str, *, until: float, level: int, source: str = SOURCE) -> None:
        self._until[client] = max(until, self._until.get(client, 0.0))

    async def active(self) -> list[StoredBan]:
        now = self._clock()
        return [
            StoredBan(client=name, until=until, level=1, source=SOURCE)
            for name, until in self._until.items()
            if until > now
        ]

    async def lift(self, client: str) -> bool:
        return self._until.pop(client, 0.0) > self._clock()


class LedgerStrikes:
    """Strikes counted in this process, blocks recorded in ``ledger`` (module docstring)."""

    def __init__(
        self,
        config: StrikesConfig,
        ledger: StrikeLedger | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._threshold = config.threshold
        self._window = config.window
        self._duration = config.duration
        self._ledger: StrikeLedger = ledger if ledger is not None else LocalLedger(clock)
        self._clock = clock
        self._counts: dict[str, tuple[float, int]] = {}
        """Client → (end of its counting window, strikes in it)."""

    async def blocked_for(self, client: str) -> float:
        until, level = self._ledger.banned_until(STRIKE_PREFIX + client)
        if level <= 0:
            return 0.0
        return max(until - self._clock(), 0.0)

    async def strike(self, clients: Sequence[str]) -> list[str]:
        now = self._clock()
        counts = self._counts
        blocked: list[str] = []
        for client in clients:
            window_end, count = counts.pop(client, (0.0, 0))
            if now >= window_end:
                window_end, count = now + self._window, 0
            count += 1
            if count >= self._threshold:
                until = now + self._duration
                self._ledger.record(STRIKE_PREFIX + client, until=until, level=1, source=SOURCE)
                blocked.append(client)
                continue
            if len(counts) >= _MAX_COUNTED:
                self._evict(now)
            counts[client] = (window_end, count)
        return blocked

    def _evict(self, now: float) -> None:
        expired = [client for client, (end, _) in self._counts.items() if end <= now]
        for client in expired:
            del self._counts[client]
        while len(self._counts) >= _MAX_COUNTED:
            # Oldest counted first (dicts keep insertion order; a new strike re-inserts).
            del self._counts[next(iter(self._counts))]

    async def active(self) -> list[StoredBan]:
        records = await self._ledger.active()
        return [
            record
            for record in records
            if isinstance(record, StoredBan) and record.source == SOURCE
        ]

    async def lift(self, client: str) -> bool:
        self._counts.pop(client.removeprefix(STRIKE_PREFIX), None)
        return await self._ledger.lift(strike_name(client))

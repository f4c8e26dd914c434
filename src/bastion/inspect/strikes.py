"""Strikes: a client whose requests keep being blocked is refused for a while (403
``client_blocked``), in every process and instance.

A client is the rate limiter's bucket of its address (aggregated to ``ratelimit.ipv4_prefix`` /
``ipv6_prefix``, as the gate counts it) and, when the request was authenticated, its principal
(``user:<id>``). Each blocked request is a strike against both; ``threshold`` strikes within
``window`` refuse that client for ``duration``.

A block is written to the client's **penalty record**, the one the rate limiter keeps for its
bans (DESIGN.md §1, step 5): the record keeps the longer of a ban and the block, and its source
(``inspect`` for a block) tells the gate to answer 403 ``client_blocked`` rather than 429
``client_banned``. So the rate limiter's gate refuses a struck address in the same store call
that decides its per-IP policies, ``bastion bans list|lift`` cover both kinds, and only when
rate limiting is off does :class:`~bastion.inspect.stage.StrikeGate` check addresses on its own.
A principal's record is checked by the inspect stage, once auth has run. Two backends, following
the rate limiter's store:

- ``RedisStrikes`` (:mod:`bastion.inspect.strikes_redis`): counts and blocks in Redis, one
  script call per blocked request; shared by every instance at once.
- :class:`MemoryStrikes`: counts in this process, blocks in the memory store's record and its
  SQL ban ledger, which every process mirrors: a block holds everywhere within the ledger's
  poll interval and a check is a dict lookup.

Blocks are named ``strike:<client>`` in ``bastion bans list`` and audit events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bastion.inspect.config import StrikesConfig
from bastion.ratelimit.core import INSPECT
from bastion.ratelimit.memory import MemoryStore

__all__ = ["SOURCE", "STRIKE_PREFIX", "MemoryStrikes", "StrikeStore", "strike_name"]

STRIKE_PREFIX = "strike:"
"""Prefix of a struck client's name in ``bastion bans`` and audit events."""
SOURCE = INSPECT
"""The ``source`` of a penalty record that strikes set."""

_MAX_COUNTED = 100_000
"""Clients whose strikes one process counts at most (without Redis); beyond, the oldest go."""


def strike_name(client: str) -> str:
    """``strike:<client>``: how a block is named in ``bastion bans`` and audit events."""
    return client if client.startswith(STRIKE_PREFIX) else STRIKE_PREFIX + client


class StrikeStore(Protocol):
    """Where strikes are counted and blocks recorded."""

    async def blocked_for(self, client: str) -> float:
        """Seconds the client is still refused for its strikes (0: not blocked; a rate-limit
        ban is the rate limiter's to answer)."""
        ...

    async def strike(self, clients: Sequence[str]) -> list[str]:
        """Count one blocked request against each client; the clients it blocked."""
        ...


class MemoryStrikes:
    """Strikes counted in this process, blocks in ``store``'s penalty records (module
    docstring). ``clock`` must be the store's (epoch seconds)."""

    def __init__(
        self,
        config: StrikesConfig,
        store: MemoryStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._threshold = config.threshold
        self._window = config.window
        self._duration = config.duration
        self._store = store
        self._clock = clock
        self._counts: dict[str, tuple[float, int]] = {}
        """Client → (end of its counting window, strikes in it)."""

    async def blocked_for(self, client: str) -> float:
        until, _, source = self._store.penalty(client)
        if source != SOURCE:
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
                self._store.block(client, now + self._duration)
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

"""Strikes: a client whose requests keep being blocked is refused for a while (403
``client_blocked``), in every process and instance.

A client is the rate limiter's bucket of its address (aggregated to ``ratelimit.ipv4_prefix`` /
``ipv6_prefix``, as the gate counts it) and, when the request was authenticated, its principal
(``user:<id>``). Each blocked request is a strike against both; ``threshold`` strikes within
``window`` refuse that client for ``duration``. Two backends:

- :class:`RedisStrikes` (``store.redis_url`` set and ``ratelimit.store`` not ``memory``, the
  rule ``bastion bans`` follows): one small script per blocked request (``INCR`` + ``PEXPIRE``
  the count, ``SET PX`` the block, index the block for ``bans list``), one ``PTTL`` per check.
  Counts and blocks are shared at once.
- :class:`LedgerStrikes` (no Redis): counts in this process, blocks in the SQL ban ledger
  (``source = "inspect"``) every process mirrors, so a block holds everywhere within the
  ledger's poll interval and a check is a dict lookup.

Blocks are named ``strike:<client>`` in ``bastion bans list`` and ``bans lift``; the names never
collide with the rate limiter's ban of the same address, which keeps its own record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.exceptions import RedisError

from bastion.inspect.config import StrikesConfig
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.ratelimit.ledger import StoredBan
from bastion.store.redis import RedisConnector

__all__ = [
    "REDIS_PREFIX",
    "STRIKE_PREFIX",
    "LedgerStrikes",
    "RedisStrikes",
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

_log: Any = get_logger("bastion.inspect")


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


# KEYS: count and block key of each client, then the index. ARGV: threshold, window (ms),
# duration (ms), then each client's name. Returns the clients this call blocked.
_STRIKE_LUA = """
local threshold = tonumber(ARGV[1])
local duration = tonumber(ARGV[3])
local index = KEYS[#KEYS]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local blocked = {}
for i = 1, #ARGV - 3 do
  local count_key, block_key = KEYS[2 * i - 1], KEYS[2 * i]
  local count = redis.call('INCR', count_key)
  if count == 1 then redis.call('PEXPIRE', count_key, ARGV[2]) end
  if count >= threshold then
    redis.call('DEL', count_key)
    redis.call('SET', block_key, now + duration, 'PX', duration)
    redis.call('ZADD', index, now + duration, ARGV[3 + i])
    blocked[#blocked + 1] = ARGV[3 + i]
  end
end
if #blocked > 0 then
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('PEXPIRE', index, duration)
end
return blocked
"""


class RedisStrikes:
    """Strikes and blocks in Redis, shared by every instance at once (module docstring).

    A Redis failure lets requests through (a check answers "not blocked", a strike is not
    counted): strikes add to inspection, which still blocks each attack on its own. Failures
    are counted as ``bastion_store_errors_total{store="redis", op="strike_check|strike"}``.
    """

    def __init__(
        self,
        redis: RedisConnector,
        config: StrikesConfig,
        *,
        timeout: float,
        metrics: Metrics | None = None,
        prefix: str = REDIS_PREFIX,
    ) -> None:
        self._client: Any = redis.client
        self._threshold = str(config.threshold)
        self._window_ms = str(max(int(config.window * 1000), 1))
        self._duration_ms = str(max(int(config.duration * 1000), 1))
        self._timeout = timeout
        self._metrics = metrics
        self._prefix = prefix
        self._index = prefix + "blocked"
        self._script: Any = self._client.register_script(_STRIKE_LUA)
        self._failing = False

    def _block_key(self, client: str) -> str:
        return f"{self._prefix}block:{client}"

    def _count_key(self, client: str) -> str:
        return f"{self._prefix}count:{client}"

    async def blocked_for(self, client: str) -> float:
        try:
            async with asyncio.timeout(self._timeout):
                left = await self._client.pttl(self._block_key(client))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("strike_check", exc)
            return 0.0
        self._failing = False
        return left / 1000.0 if left > 0 else 0.0

    async def strike(self, clients: Sequence[str]) -> list[str]:
        keys: list[str] = []
        for client in clients:
            keys += (self._count_key(client), self._block_key(client))
        keys.append(self._index)
        args = [self._threshold, self._window_ms, self._duration_ms, *clients]
        try:
            async with asyncio.timeout(self._timeout):
                blocked = await self._script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("strike", exc)
            return []
        self._failing = False
        return [name.decode() if isinstance(name, bytes) else str(name) for name in blocked]

    async def active(self) -> list[StoredBan]:
        now_ms = time.time() * 1000
        rows = await self._client.zrangebyscore(self._index, now_ms, "+inf", withscores=True)
        records: list[StoredBan] = []
        for name, until_ms in rows:
            client = name.decode() if isinstance(name, bytes) else str(name)
            records.append(
                StoredBan(client=strike_name(client), until=until_ms / 1000, level=1, source=SOURCE)
            )
        return records

    async def lift(self, client: str) -> bool:
        name = client.removeprefix(STRIKE_PREFIX)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._block_key(name))
        pipe.delete(self._count_key(name))
        pipe.zrem(self._index, name)
        blocks, _, _ = await pipe.execute()
        return bool(blocks)

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.store_error("redis", op)
        if not self._failing:
            self._failing = True
            _log.error("strike store failed; requests pass unchecked", op=op, error=repr(exc))

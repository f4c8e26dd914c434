"""Strikes in Redis, shared by every instance at once (see :mod:`bastion.inspect.strikes`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from bastion.inspect.config import StrikesConfig
from bastion.inspect.strikes import REDIS_PREFIX, SOURCE, STRIKE_PREFIX, strike_name
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.ratelimit.ledger import StoredBan
from bastion.store.redis import RedisConnector

__all__ = ["RedisStrikes"]

_log: Any = get_logger("bastion.inspect")

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

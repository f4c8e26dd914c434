"""The shared tier: entries in Redis, tag sets, single-flight locks and the invalidation channel.

Keys under ``key_prefix`` (default ``bastion:c:``): ``v:<key>`` holds an entry, ``t:<tag>`` the
set of keys carrying a tag, ``l:<key>`` the lock of one instance loading a key. Writes and
invalidations publish on the invalidation channel in the same round trip (a Lua script or a
pipeline), so no instance learns of a change later than the change itself.

Every call is bounded by the cache's ``timeout``. After a failure the tier is *down* for
``retry_after`` (doubling on each further failure, at most 30 s): callers skip it without
paying a timeout per call; the first call after the pause probes Redis again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError, describe

__all__ = ["CacheStoreError", "RedisTier"]

T = TypeVar("T")

_ERRORS = (RedisError, OSError, TimeoutError)
_MAX_PAUSE = 30.0
_LOG_INTERVAL = 30.0
_SCAN_BATCH = 1000

_log: Any = get_logger("bastion.cache")

# KEYS[1] the entry, KEYS[2..] its tag sets; ARGV: record, ttl (ms), tag ttl (s), channel, message.
# A tag set lives as long as its longest-lived member (TTL only ever extended).
_SET = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[3])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# KEYS[1] the tag set; ARGV: channel, message. Deletes its members in batches; returns how many
# existed.
_TAG = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
for i = 1, #members, 500 do
  removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('UNLINK', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return removed
"""

# KEYS[1] the lock; ARGV[1] the owner's token.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CacheStoreError(StoreError):
    """A Redis call of the cache failed or was skipped while Redis is paused after failures."""


def _escape_glob(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisTier:
    """Redis operations of the cache with a timeout each and a pause after failures."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        channel: str,
        timeout: float,
        retry_after: float,
        metrics: Metrics,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = channel
        self.timeout = timeout
        self._values = prefix + "v:"
        self._tags = prefix + "t:"
        self._locks = prefix + "l:"
        self._retry_after = retry_after
        self._metrics = metrics
        self._on_recover = on_recover
        self._down_until = 0.0
        self._pause = retry_after
        self._failing = False
        self._logged_at = -_LOG_INTERVAL
        self._set = client.register_script(_SET)
        self._tag = client.register_script(_TAG)
        self._unlock = client.register_script(_UNLOCK)

    @property
    def usable(self) -> bool:
        """Whether calls go to Redis now (false while paused after a failure)."""
        return time.monotonic() >= self._down_until

    @property
    def failing(self) -> bool:
        """Whether the last call failed (Redis is considered down)."""
        return self._failing

    def value_key(self, key: str) -> str:
        return self._values + key

    def tag_key(self, tag: str) -> str:
        return self._tags + tag

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            raise CacheStoreError(f"cache {op} skipped: redis paused after failures")
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except _ERRORS as exc:
            self._failed(op, exc)
            raise CacheStoreError(f"cache {op} failed: {describe(exc)}") from exc
        if self._failing:
            self._recovered()
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        self._metrics.store_error("cache", op)
        now = time.monotonic()
        if self._failing:
            self._pause = min(self._pause * 2, _MAX_PAUSE)
        self._failing = True
        self._down_until = now + self._pause
        if now - self._logged_at >= _LOG_INTERVAL:
            self._logged_at = now
            _log.warning(
                "cache: redis failed, serving from the in-process tier",
                op=op,
                error=describe(exc),
                retry_in=round(self._pause, 3),
            )

    def _recovered(self) -> None:
        self._failing = False
        self._pause = self._retry_after
        self._down_until = 0.0
        _log.info("cache: redis answers again")
        if self._on_recover is not None:
            self._on_recover()

    async def get(self, key: str) -> bytes | None:
        """The record of ``key``, or ``None``."""
        name = self._values + key
        result: bytes | str | None = await self._call("get", lambda: self.client.get(name))
        return result.encode() if isinstance(result, str) else result

    async def set(
        self, key: str, record: bytes, *, ttl_ms: int, tags: Sequence[str], message: bytes
    ) -> None:
        """Store ``record`` for ``ttl_ms``, add ``key`` to each tag's set, publish ``message``."""
        name = self._values + key
        if not tags:
            await self._call("set", lambda: self._pipeline_set(name, record, ttl_ms, message))
            return
        keys = [name, *(self._tags + tag for tag in tags)]
        tag_ttl = ttl_ms // 1000 + 1
        await self._call(
            "set",
            lambda: self._set(keys=keys, args=[record, ttl_ms, tag_ttl, self.channel, message]),
        )

    async def _pipeline_set(self, name: str, record: bytes, ttl_ms: int, message: bytes) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(name, record, px=ttl_ms)
            pipe.publish(self.channel, message)
            await pipe.execute()

    async def delete(self, keys: Sequence[str], *, message: bytes) -> int:
        """Delete the entries of ``keys`` and publish ``message``; how many existed."""
        names = [self._values + key for key in keys]

        async def run() -> int:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.unlink(*names)
                pipe.publish(self.channel, message)
                removed, _ = await pipe.execute()
            return int(removed)

        return await self._call("delete", run)

    async def invalidate_tag(self, tag: str, *, message: bytes) -> int:
        """Delete every entry tagged ``tag`` and publish ``message``; how many existed."""
        name = self._tags + tag
        removed = await self._call(
            "invalidate_tag", lambda: self._tag(keys=[name], args=[self.channel, message])
        )
        return int(removed)

    async def invalidate_prefix(self, prefix: str, *, message: bytes) -> int:
        """Delete every entry whose key starts with ``prefix`` and publish ``message``.

        SCAN walks the keyspace in batches so Redis is never blocked; the timeout applies to
        each batch, not to the whole walk."""
        pattern = _escape_glob(self._values + prefix) + "*"
        removed = 0
        cursor = 0
        while True:
            cursor, names = await self._call(
                "invalidate_prefix",
                lambda c=cursor: self.client.scan(c, match=pattern, count=_SCAN_BATCH),  # type: ignore[misc]
            )
            if names:
                batch = list(names)
                removed += int(
                    await self._call("invalidate_prefix", lambda b=batch: self.client.unlink(*b))  # type: ignore[misc]
                )
            if cursor == 0:
                break
        await self.publish(message)
        return removed

    async def publish(self, message: bytes) -> None:
        """Publish ``message`` on the invalidation channel."""
        await self._call("publish", lambda: self.client.publish(self.channel, message))

    async def lock(self, key: str, ttl: float) -> str | None:
        """Take the loading lock of ``key`` for ``ttl`` seconds: the token to release it with,
        or ``None`` when another instance holds it."""
        token = secrets.token_hex(8)
        name = self._locks + key
        taken = await self._call(
            "lock", lambda: self.client.set(name, token, nx=True, px=max(1, int(ttl * 1000)))
        )
        return token if taken else None

    async def locked(self, key: str) -> bool:
        """Whether an instance holds the loading lock of ``key``."""
        name = self._locks + key
        return bool(await self._call("lock", lambda: self.client.exists(name)))

    async def unlock(self, key: str, token: str) -> None:
        """Release a lock taken with :meth:`lock` (only if it is still ours)."""
        name = self._locks + key
        await self._call("unlock", lambda: self._unlock(keys=[name], args=[token]))

    async def ping(self) -> None:
        """``PING`` within the timeout."""
        await self._call("ping", self.client.ping)

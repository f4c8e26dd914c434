"""Clocks the rate-limit tests move by hand, for the memory store and for the Redis store.

A test on real time can see more time pass than it says (a slow or stalled machine between two
steps), which ends windows, bans and blocks early; on these clocks time passes only in
``advance`` and ``align``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from bastion.ratelimit import redis_store
from bastion.ratelimit.redis_store import RedisStore
from bastion.store.redis import RedisConnector

START = 1_700_000_000.0
"""The manual clock's start: an epoch-sized time, so float rounding is the real one."""


class FakeTime(Protocol):
    """Time as the store under test sees it."""

    now: float
    """Epoch seconds."""

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...

    async def align(self, period: float) -> None:
        """Move to just after the start of a window ``[k * period, (k + 1) * period)``, so a
        test working within one window is not cut by its end."""
        ...


class ManualClock:
    """A clock that only moves when told: the memory store's ``clock``."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds

    async def align(self, period: float) -> None:
        # A hair after the boundary: exactly on it, k * period may round to either side.
        self.now = (int(self.now / period) + 1) * period + 1e-4


class RedisClock:
    """The Redis store's time, moved only by the test.

    The store's script reads the server's ``TIME``; under test it runs a copy reading this
    clock's key instead (:meth:`script`). Redis still expires keys by its own clock, so the copy
    also stretches every expiry by :data:`STRETCH`, and :meth:`advance` takes the time it moves
    off the keys' remaining lives (deleting those that end): a key lives as long in this clock's
    time as the script asked, and the real time a test takes (a minute is 6 ms here) hardly
    counts.
    """

    STRETCH = 10_000

    def __init__(self, client: Redis, key: str, prefix: str) -> None:
        self._client = client
        self._key = key
        self._prefix = prefix
        self.now = time.time()

    def script(self) -> bytes:
        """The store's script on this clock."""
        reads_time = (
            b"local clock = redis.call('TIME')\n"
            b"local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])\n"
        )
        expiry = b"local ms = math.ceil(micros / 1000)\n"
        script = redis_store.SCRIPT
        # Each replaced line exactly once, or the script changed under the test.
        assert script.count(reads_time) == 1
        assert script.count(expiry) == 1
        reads_clock = b"local now = tonumber(redis.call('GET', '%s'))\n" % self._key.encode()
        stretched = b"local ms = math.ceil(micros * %d / 1000)\n" % self.STRETCH
        return script.replace(reads_time, reads_clock).replace(expiry, stretched)

    async def start(self) -> None:
        await self._client.set(self._key, round(self.now * 1_000_000))

    def store(self, connector: RedisConnector, **options: Any) -> RedisStore:
        """A :class:`RedisStore` running the script on this clock (call :meth:`start` first)."""
        with pytest.MonkeyPatch.context() as patch:
            # The store takes its script (and the script's SHA) when it is made.
            patch.setattr(redis_store, "SCRIPT", self.script())
            return RedisStore(connector, **options)

    async def advance(self, seconds: float) -> None:
        await self._move_to(self.now + seconds)

    async def align(self, period: float) -> None:
        # A hair after the boundary: exactly on it, k * period may round to either side.
        await self._move_to((int(self.now / period) + 1) * period + 1e-4)

    async def _move_to(self, now: float) -> None:
        passed_ms = (now - self.now) * 1000 * self.STRETCH
        self.now = now
        await self._client.set(self._key, round(now * 1_000_000))
        async for key in self._client.scan_iter(match=self._prefix + "*"):
            left = await self._client.pttl(key)
            if left < 0:
                continue
            if left <= passed_ms:
                await self._client.delete(key)
            else:
                await self._client.pexpire(key, math.ceil(left - passed_ms))

    async def ttl(self, key: bytes) -> float:
        """Seconds ``key`` has left to live on this clock (-1: no expiry)."""
        milliseconds = await self._client.pttl(key)
        return milliseconds / 1000 / self.STRETCH if milliseconds >= 0 else -1.0

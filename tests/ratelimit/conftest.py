"""Every rate-limit store behind one fixture, with time the tests can move forward.

``store_factory`` is parametrized over the backends: ``memory`` (a :class:`MemoryStore` on a
manual clock) and ``redis`` (a ``RedisStore`` on the test Redis, running its script with the
server's ``TIME`` replaced by a clock the test keeps in Redis: :class:`RedisClock`). On both,
``advance`` is instant and exact, so a slow machine cannot let more time pass than the test
says. Tests written against it keep periods short (under a second) and compare times with
``backend.tolerance``.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import AsyncIterator
from typing import Protocol

import pytest
from redis.asyncio import Redis

from bastion.ratelimit import redis_store
from bastion.ratelimit.core import BanLedger, Check, RateLimitStore, Rule
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.redis_store import RedisStore
from bastion.store.redis import RedisConnector

START = 1_700_000_000.0
"""The manual clock's start: an epoch-sized time, so float rounding is the real one."""


class FakeTime(Protocol):
    """Time as the store under test sees it."""

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


class Backend(abc.ABC):
    """One backend under test: new stores, its time, and how exactly it keeps to it."""

    def __init__(self, name: str, time: FakeTime, tolerance: float) -> None:
        self.name = name
        self.time = time
        self.tolerance = tolerance
        """Absolute tolerance of compared durations (seconds)."""
        self.stores: list[RateLimitStore] = []

    @property
    def exact(self) -> bool:
        """Whether time is under the test's control (memory) rather than real (Redis)."""
        return self.name == "memory"

    @abc.abstractmethod
    async def __call__(self, *, ledger: BanLedger | None = None) -> RateLimitStore:
        """A new, empty store (closed after the test)."""

    @abc.abstractmethod
    async def ttls(self) -> dict[str, float]:
        """Seconds left to live of every key the backend holds (-1: no expiry); the memory
        store has no expiry per key, so it reports the idle time of its buckets."""

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.memory: list[MemoryStore] = []
        super().__init__("memory", self.clock, 1e-5)

    async def __call__(self, *, ledger: BanLedger | None = None) -> RateLimitStore:
        store = MemoryStore(clock=self.clock, ledger=ledger)
        self.stores.append(store)
        self.memory.append(store)
        return store

    async def ttls(self) -> dict[str, float]:
        now = self.clock.now
        # A GCRA bucket is its tat; any other a list whose first item is its expiry.
        return {
            f"{policy}:{key}": (bucket if isinstance(bucket, float) else bucket[0]) - now
            for store in self.memory
            for policy, table in store._tables.items()
            for key, bucket in table.buckets.items()
        }


class RedisBackend(Backend):
    PREFIX = "bastion:rl:test:"
    CLOCK_KEY = "bastion:rl:test-clock"
    """Outside :data:`PREFIX`: not one of the store's keys."""

    def __init__(self, url: str) -> None:
        self.connector = RedisConnector.from_url(url)
        self.clock = RedisClock(self.connector.client, self.CLOCK_KEY, self.PREFIX)
        # Exact time, but the store reports durations in whole microseconds and Redis keeps
        # expiries in whole milliseconds.
        super().__init__("redis", self.clock, 0.002)

    async def __call__(self, *, ledger: BanLedger | None = None) -> RateLimitStore:
        if ledger is not None:
            raise ValueError("the Redis store keeps its bans in Redis: no ledger")
        if not self.stores:
            await self.clock.start()
        with pytest.MonkeyPatch.context() as patch:
            # The store takes its script (and the script's SHA) when it is made.
            patch.setattr(redis_store, "SCRIPT", self.clock.script())
            store = RedisStore(self.connector, prefix=self.PREFIX)
        self.stores.append(store)
        # The first call connects and loads the script (tens of milliseconds under coverage on
        # a busy machine): made here, so the calls a test times measure the store itself.
        warm = Check(Rule("warm-up", "fixed_window", 1, 1.0, 1), "warm-up|ip:warm-up")
        await store.evaluate([warm])
        client = self.connector.client
        async for key in client.scan_iter(match=f"{self.PREFIX}*warm-up*"):
            await client.delete(key)
        return store

    async def ttls(self) -> dict[str, float]:
        client = self.connector.client
        found: dict[str, float] = {}
        async for key in client.scan_iter(match=self.PREFIX + "*"):
            found[key.decode()] = await self.clock.ttl(key)
        return found

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.connector.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A :class:`Backend`: ``await store_factory()`` makes a store; ``store_factory.time``."""
    backend: Backend
    if request.param == "memory":
        backend = MemoryBackend()
    else:
        backend = RedisBackend(request.getfixturevalue("clean_redis_url"))
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock for tests of the memory store alone."""
    return ManualClock()

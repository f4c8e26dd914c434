"""Every rate-limit store behind one fixture, with time the tests can move forward.

``store_factory`` is parametrized over the backends: ``memory`` (a :class:`MemoryStore` on a
manual clock, so ``advance`` is instant and exact) and ``redis`` (a ``RedisStore`` on the test
Redis, whose ``TIME`` cannot be faked, so ``advance`` sleeps). Tests written against it keep
periods short (under a second) and compare times with ``backend.tolerance``: 10 µs on memory, a
few milliseconds of real scheduling on Redis.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

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


class WallTime:
    """Real time, for a store whose clock is not ours (Redis ``TIME``).

    Sleeps end at deadlines, not after durations: the event loop's timers overshoot by a few
    milliseconds on a busy virtual machine, and over an align and two advances that alone used
    up a test's tolerance. Each deadline is counted from the previous one (the time the test's
    own calls take in between is not added) when it was under ``_SLACK`` ago, else from now.
    """

    _SLACK = 0.01

    def __init__(self) -> None:
        self._at = 0.0

    async def _until(self, deadline: float) -> None:
        while (left := deadline - time.time()) > 0:
            # Most of the wait asleep, the last two milliseconds yielding to the loop.
            await asyncio.sleep(left - 0.002 if left > 0.003 else 0)
        self._at = deadline

    async def advance(self, seconds: float) -> None:
        now = time.time()
        await self._until((self._at if now - self._at < self._SLACK else now) + seconds)

    async def align(self, period: float) -> None:
        # The test Redis runs on this host, so its TIME and ours agree to well under this.
        now = time.time()
        await self._until(now + period - now % period + 0.005)


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

    def __init__(self, url: str) -> None:
        super().__init__("redis", WallTime(), 0.03)
        self.connector = RedisConnector.from_url(url)

    async def __call__(self, *, ledger: BanLedger | None = None) -> RateLimitStore:
        if ledger is not None:
            raise ValueError("the Redis store keeps its bans in Redis: no ledger")
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
            milliseconds = await client.pttl(key)
            found[key.decode()] = milliseconds / 1000 if milliseconds >= 0 else -1.0
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

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
from collections.abc import AsyncIterator

import pytest

from bastion.ratelimit.core import BanLedger, Check, RateLimitStore, Rule
from bastion.ratelimit.memory import MemoryStore
from bastion.store.redis import RedisConnector
from ratelimit.clocks import FakeTime, ManualClock, RedisClock


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
        store = self.clock.store(self.connector, prefix=self.PREFIX)
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

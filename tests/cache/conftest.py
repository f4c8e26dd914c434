"""Every shape of the tiered cache behind one fixture.

``make_cache`` is parametrized over ``l1`` (in process only), ``l2`` (Redis only: L1 turned off)
and ``tiered`` (both); the Redis shapes use the test Redis, emptied before each test. Every cache
a test makes is started and closed for it.

``cache_clock`` moves the cache's wall clock by hand, so an entry's ttl passes when the test says
so rather than when a slow machine gets there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from bastion.cache import Cache
from bastion.cache.config import CacheConfig
from bastion.observe.metrics import Metrics
from manual_clock import ManualClock

SHAPES = ("l1", "l2", "tiered")

PATIENT_REDIS = 15.0
"""Seconds a test cache waits on the test Redis (the default 0.25 s is meant for production)."""


class MakeCache(Protocol):
    """Builds a started cache of the test's shape; ``shape`` says which it is."""

    shape: str

    async def __call__(self, **config: Any) -> Cache: ...


class _Factory:
    def __init__(self, shape: str, redis_url: str | None) -> None:
        self.shape = shape
        self.redis_url = redis_url
        self.caches: list[Cache] = []

    async def __call__(self, **config: Any) -> Cache:
        if self.shape == "l2":
            config.setdefault("l1_max_entries", 0)
        # The test Redis always answers: a short timeout would only mistake a stalled test
        # process for a Redis outage (the cache then answers from L1 alone and publishes
        # nothing), which test_resilience provokes on purpose with a Redis of its own.
        config.setdefault("timeout", PATIENT_REDIS)
        settings = CacheConfig(**config)
        client = None
        if self.shape != "l1":
            assert self.redis_url is not None
            client = Redis.from_url(
                self.redis_url, socket_timeout=PATIENT_REDIS, socket_connect_timeout=PATIENT_REDIS
            )
        cache = Cache(settings, redis=client, metrics=Metrics(), owns_redis=True)
        await cache.start()
        self.caches.append(cache)
        return cache

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()


@pytest.fixture
def cache_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Freshness and staleness follow this clock; Redis still drops a record at the end of its
    lifetime by its own clock, so a test ageing an entry this way gives it a real lifetime far
    longer than the test takes."""
    clock = ManualClock(1_800_000_000.0)
    monkeypatch.setattr("bastion.cache.tiered._time", clock)
    return clock


@pytest.fixture(params=SHAPES)
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    shape: str = request.param
    url = request.getfixturevalue("clean_redis_url") if shape != "l1" else None
    factory = _Factory(shape, url)
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
async def make_tiered(clean_redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Builds started tiered caches on the test Redis (several act as several instances)."""
    factory = _Factory("tiered", clean_redis_url)
    try:
        yield factory
    finally:
        await factory.close()

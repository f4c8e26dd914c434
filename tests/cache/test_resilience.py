"""Redis failing under the cache: callers never see an error, Redis is not asked again on every
call while it is down, and everything comes back when it does (a private redis-server of the
test's own is killed, frozen and restarted; the shared test server is never touched)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from bastion.cache import Cache
from bastion.cache.config import CacheConfig
from bastion.observe.metrics import Metrics
from ratelimit.redis_helpers import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    private = RedisServer()
    private.start()
    try:
        yield private
    finally:
        private.stop()


@pytest.fixture
async def caches(server: RedisServer) -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    try:
        yield made
    finally:
        for cache in made:
            await cache.close()


async def tiered(server: RedisServer, caches: list[Cache], **config: Any) -> Cache:
    # A second per call: a frozen Redis still costs a timeout soon, and a slow machine's call to
    # a healthy one does not run out of it (which would make the cache degraded unasked).
    client = Redis.from_url(server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    settings = CacheConfig(**{"timeout": 1.0, "retry_after": 0.05, **config})
    cache = Cache(settings, redis=client, metrics=Metrics(), owns_redis=True)
    await cache.start()
    caches.append(cache)
    return cache


def store_errors(cache: Cache) -> float:
    registry = cache.metrics.registry
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "bastion_store_errors"
        for sample in metric.samples
        if sample.name == "bastion_store_errors_total" and sample.labels["store"] == "cache"
    )


async def exercise(cache: Cache, round_: int) -> None:
    """Every operation, each answering without an exception."""

    async def loader() -> str:
        return f"loaded {round_}"

    assert await cache.get_or_set(f"fresh{round_}", loader) == f"loaded {round_}"
    await cache.set(f"k{round_}", round_, tags=["t"])
    assert await cache.get(f"k{round_}") == round_
    assert await cache.get("never-set") is None
    await cache.delete(f"k{round_}")
    await cache.invalidate_tag("t")
    await cache.invalidate_prefix("k")
    assert await cache.get_entry("never-set") is None
    await cache.warm({f"w{round_}": loader})


async def eventually(cache: Cache, *, degraded: bool, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while cache.degraded != degraded:
            await cache.get("probe")
            await asyncio.sleep(0.02)


async def test_redis_killed_and_restarted_during_use(
    server: RedisServer, caches: list[Cache]
) -> None:
    cache = await tiered(server, caches)
    await exercise(cache, 0)
    assert not cache.degraded
    server.kill()
    for round_ in range(1, 30):
        await exercise(cache, round_)
    assert cache.degraded
    assert store_errors(cache) > 0
    cache.report_metrics()
    registry = cache.metrics.registry
    assert registry.get_sample_value("bastion_cache_l2_up") == 0
    errors = registry.get_sample_value(
        "bastion_cache_requests_total", {"cache": "l2", "result": "error"}
    )
    assert errors is not None
    assert errors > 0
    server.start()
    await eventually(cache, degraded=False)
    await exercise(cache, 100)
    cache.report_metrics()
    assert registry.get_sample_value("bastion_cache_l2_up") == 1


async def test_while_paused_redis_is_not_asked_on_every_call(
    server: RedisServer, caches: list[Cache]
) -> None:
    cache = await tiered(server, caches, retry_after=60)
    server.kill()
    await cache.get("first")  # fails, pauses Redis for a minute
    failures = store_errors(cache)
    assert failures >= 1
    for round_ in range(50):
        await exercise(cache, round_)
    assert store_errors(cache) == failures


async def test_a_frozen_redis_costs_one_timeout_then_calls_skip_it(
    server: RedisServer, caches: list[Cache]
) -> None:
    cache = await tiered(server, caches, retry_after=60)
    await cache.set("k", "v")
    server.pause()
    try:
        assert await cache.get_or_set("other", _constant("x")) == "x"
        failures = store_errors(cache)
        for round_ in range(20):
            await exercise(cache, round_)
        assert store_errors(cache) == failures
    finally:
        server.resume()


async def test_invalidations_made_while_redis_was_down_are_applied_when_it_returns(
    server: RedisServer, caches: list[Cache]
) -> None:
    writer = await tiered(server, caches)
    reader = await tiered(server, caches)
    await writer.set("gone", "old", tags=["t"])
    await writer.set("changed", "old")
    await writer.set("tagged", "old", tags=["group"])
    server.pause()
    try:
        await writer.delete("gone")
        await writer.set("changed", "new")
        await writer.invalidate_tag("group")
        assert writer.degraded
    finally:
        server.resume()
    await eventually(writer, degraded=False)

    async def replayed() -> bool:
        values = [await reader.get(key) for key in ("gone", "changed", "tagged")]
        return values == [None, None, None]

    async with asyncio.timeout(10):
        while not await replayed():
            await asyncio.sleep(0.02)


async def test_l1_is_cleared_when_the_invalidation_channel_comes_back(
    server: RedisServer, caches: list[Cache]
) -> None:
    """Messages sent while the subscription was down are lost: what L1 held may be outdated."""
    cache = await tiered(server, caches)
    await cache.set("k", "v")
    assert cache.l1 is not None
    assert "k" in cache.l1
    server.kill()
    server.start()
    async with asyncio.timeout(10):
        while "k" in cache.l1:
            await asyncio.sleep(0.02)


def _constant(value: str) -> Any:
    async def loader() -> str:
        return value

    return loader


async def test_a_cache_starts_while_redis_is_down_and_joins_it_later(
    server: RedisServer, caches: list[Cache]
) -> None:
    server.kill()
    cache = await tiered(server, caches)
    await exercise(cache, 0)
    assert cache.degraded
    server.start()
    await eventually(cache, degraded=False)
    other = await tiered(server, caches)
    await other.set("shared", "from the other instance")
    assert await cache.get("shared") == "from the other instance"
    bus = cache._core.bus
    assert bus is not None
    async with asyncio.timeout(10):
        while not bus.connected:
            await asyncio.sleep(0.02)
    await other.set("shared", "changed")
    # The message evicts the old value from L1 (which holds it for the default ttl, far longer).
    async with asyncio.timeout(30):
        while await cache.get("shared") != "changed":
            await asyncio.sleep(0.02)

"""The public cache API, run against every shape: L1 only, L2 (Redis) only, and tiered."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bastion.cache import Cache, Entry, SerializationError, Uncacheable
from manual_clock import ManualClock

from .conftest import MakeCache


class CountingLoader:
    """A loader that counts its calls, returns ``values`` in turn (the last one repeats),
    and waits on ``gate`` first when one is given."""

    def __init__(self, *values: Any, gate: asyncio.Event | None = None, delay: float = 0.0):
        self.values = list(values) or ["value"]
        self.calls = 0
        self.gate = gate
        self.delay = delay

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.values[min(self.calls, len(self.values)) - 1]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait until ``check`` holds (background work lands), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def test_set_get_delete(make_cache: MakeCache) -> None:
    cache = await make_cache()
    value = {"status": 200, "headers": [(b"a", b"b")], "body": b"\x00" * 5000, "n": [1.5, None]}
    await cache.set("k", value)
    assert await cache.get("k") == value
    assert await cache.get("missing", "default") == "default"
    await cache.delete("k")
    assert await cache.get("k") is None


async def test_entries_expire(make_cache: MakeCache) -> None:
    cache = await make_cache()
    await cache.set("short", "v", ttl=0.05)
    await cache.set("long", "v", ttl=60)
    await asyncio.sleep(0.1)
    assert await cache.get("short") is None
    assert await cache.get("long") == "v"


async def test_unserializable_values_are_refused_on_set(make_cache: MakeCache) -> None:
    cache = await make_cache()
    with pytest.raises(SerializationError):
        await cache.set("k", {1, 2})
    assert await cache.get("k") is None


async def test_single_flight_under_100_concurrent_callers(make_cache: MakeCache) -> None:
    cache = await make_cache()
    gate = asyncio.Event()
    loader = CountingLoader({"computed": True}, gate=gate)
    callers = [asyncio.create_task(cache.get_or_set("hot", loader)) for _ in range(100)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*callers)
    assert loader.calls == 1
    assert results == [{"computed": True}] * 100
    assert await cache.get_or_set("hot", loader) == {"computed": True}
    assert loader.calls == 1


async def test_a_loader_failure_reaches_every_waiter_and_is_not_cached(
    make_cache: MakeCache,
) -> None:
    cache = await make_cache()
    calls = 0

    async def failing() -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise RuntimeError("upstream down")

    results = await asyncio.gather(
        *(cache.get_or_set("k", failing) for _ in range(20)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(result, RuntimeError) for result in results)
    assert await cache.get_or_set("k", CountingLoader("ok")) == "ok"


async def test_a_cancelled_caller_does_not_cancel_the_others(make_cache: MakeCache) -> None:
    cache = await make_cache()
    gate = asyncio.Event()
    loader = CountingLoader("v", gate=gate)
    first = asyncio.create_task(cache.get_or_set("k", loader))
    second = asyncio.create_task(cache.get_or_set("k", loader))
    await asyncio.sleep(0.02)
    first.cancel()
    gate.set()
    assert await second == "v"
    assert loader.calls == 1


async def test_stale_while_revalidate_returns_stale_then_refreshes(
    make_cache: MakeCache, cache_clock: ManualClock
) -> None:
    cache = await make_cache()
    assert await cache.get_or_set("k", CountingLoader("v1"), ttl=30, stale_ttl=30) == "v1"
    cache_clock.advance(31)
    gate = asyncio.Event()
    refresh = CountingLoader("v2", gate=gate)
    # The refresh is blocked: the stale value comes back at once, to every caller.
    results = await asyncio.gather(
        *(cache.get_or_set("k", refresh, ttl=60, stale_ttl=30) for _ in range(10))
    )
    assert results == ["v1"] * 10
    assert await cache.get("k") is None  # stale is not fresh
    entry = await cache.get_entry("k")
    assert entry is not None
    assert entry.value == "v1"
    assert not entry.fresh
    gate.set()

    async def refreshed() -> bool:
        return await cache.get("k") == "v2"

    await eventually(refreshed)
    assert refresh.calls == 1


async def test_past_the_stale_window_the_caller_waits_for_the_loader(
    make_cache: MakeCache,
) -> None:
    cache = await make_cache()
    await cache.get_or_set("k", CountingLoader("v1"), ttl=0.05, stale_ttl=0.05)
    await asyncio.sleep(0.15)
    assert await cache.get_or_set("k", CountingLoader("v2")) == "v2"


async def test_early_refresh_reloads_a_hot_key_before_it_expires(make_cache: MakeCache) -> None:
    cache = await make_cache(early_refresh=10_000)
    loader = CountingLoader("v1", "v2", delay=0.01)
    assert await cache.get_or_set("k", loader, ttl=30) == "v1"

    async def refreshed() -> bool:
        return await cache.get_or_set("k", loader, ttl=30) == "v2"

    await eventually(refreshed)
    assert loader.calls >= 2


async def test_no_early_refresh_when_turned_off(make_cache: MakeCache) -> None:
    cache = await make_cache(early_refresh=0)
    loader = CountingLoader("v1", "v2", delay=0.01)
    for _ in range(200):
        assert await cache.get_or_set("k", loader, ttl=30) == "v1"
    assert loader.calls == 1


async def test_negative_caching(make_cache: MakeCache, cache_clock: ManualClock) -> None:
    cache = await make_cache()
    loader = CountingLoader(None, "found")
    assert await cache.get_or_set("absent", loader, negative_ttl=60) is None
    assert await cache.get_or_set("absent", loader, negative_ttl=60) is None
    assert loader.calls == 1
    cache_clock.advance(61)
    assert await cache.get_or_set("absent", loader, negative_ttl=60) == "found"
    assert loader.calls == 2


async def test_none_is_not_cached_without_a_negative_ttl(make_cache: MakeCache) -> None:
    cache = await make_cache()
    loader = CountingLoader(None)
    await cache.get_or_set("absent", loader)
    await cache.get_or_set("absent", loader)
    assert loader.calls == 2


async def test_negative_ttl_from_configuration(make_cache: MakeCache) -> None:
    cache = await make_cache(negative_ttl=60)
    loader = CountingLoader(None)
    await cache.get_or_set("absent", loader)
    await cache.get_or_set("absent", loader)
    assert loader.calls == 1


async def test_an_entry_with_its_own_ttl_caches_none_for_that_long(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls = 0

    async def loader() -> Entry:
        nonlocal calls
        calls += 1
        return Entry(None, ttl=60)

    assert await cache.get_or_set("absent", loader) is None
    assert await cache.get_or_set("absent", loader) is None
    assert calls == 1


async def test_loader_chooses_ttl_and_tags_with_entry(
    make_cache: MakeCache, cache_clock: ManualClock
) -> None:
    cache = await make_cache()

    async def loader() -> Entry:
        return Entry({"v": 1}, ttl=30, tags=["late"], stale_ttl=0)

    assert await cache.get_or_set("k", loader, ttl=60, tags=["early"]) == {"v": 1}
    assert await cache.invalidate_tag("early") == 0
    assert await cache.get("k") == {"v": 1}
    cache_clock.advance(31)  # past the entry's ttl, within the call's
    assert await cache.get("k") is None
    await cache.get_or_set("k", loader)
    assert await cache.invalidate_tag("late") == 1
    assert await cache.get("k") is None


async def test_uncacheable_reaches_every_waiter_but_is_not_stored(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls = 0

    async def loader() -> Uncacheable:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return Uncacheable({"private": True})

    results = await asyncio.gather(*(cache.get_or_set("k", loader) for _ in range(10)))
    assert results == [{"private": True}] * 10
    assert calls == 1
    assert await cache.get("k") is None
    await cache.get_or_set("k", loader)
    assert calls == 2


async def test_tags(make_cache: MakeCache) -> None:
    cache = await make_cache()
    await cache.set("user:42:profile", "p", tags=["user:42"])
    await cache.set("user:42:orders", "o", tags=["user:42", "orders"])
    await cache.set("user:7:profile", "p7", tags=["user:7"])
    assert await cache.invalidate_tag("user:42") == 2
    assert await cache.get("user:42:profile") is None
    assert await cache.get("user:42:orders") is None
    assert await cache.get("user:7:profile") == "p7"
    assert await cache.invalidate_tag("user:42") == 0


async def test_prefixes(make_cache: MakeCache) -> None:
    cache = await make_cache()
    for key in ("page:/a", "page:/a/b", "page:/b", "pager", "other"):
        await cache.set(key, key)
    # Glob characters in a prefix are literal.
    await cache.set("page:*", "star")
    assert await cache.invalidate_prefix("page:/a") == 2
    assert await cache.get("page:/a") is None
    assert await cache.get("page:/a/b") is None
    assert await cache.get("page:/b") == "page:/b"
    assert await cache.invalidate_prefix("page:*") == 1
    assert await cache.get("page:/b") == "page:/b"
    assert await cache.invalidate_prefix("page") == 2
    assert await cache.get("other") == "other"


async def test_namespaces_keep_keys_tags_and_prefixes_apart(make_cache: MakeCache) -> None:
    cache = await make_cache()
    users = cache.namespace("users")
    pages = cache.namespace("pages")
    await users.set("1", "user one", tags=["t"])
    await pages.set("1", "page one", tags=["t"])
    await cache.set("1", "root one", tags=["t"])
    assert await users.get("1") == "user one"
    assert await pages.get("1") == "page one"
    assert await cache.get("users:1") == "user one"
    assert await users.invalidate_tag("t") == 1
    assert await pages.get("1") == "page one"
    assert await cache.get("1") == "root one"
    assert await pages.invalidate_prefix("") == 1
    assert await cache.get("1") == "root one"
    nested = users.namespace("v2")
    await nested.set("x", 1)
    assert await cache.get("users:v2:x") == 1
    with pytest.raises(ValueError, match="namespace"):
        cache.namespace("a:b")


async def test_warm_loads_missing_keys_and_survives_failures(make_cache: MakeCache) -> None:
    cache = await make_cache()
    await cache.set("present", "already")
    present = CountingLoader("new")

    async def broken() -> Any:
        raise RuntimeError("boom")

    await cache.warm({"a": CountingLoader("A"), "present": present, "bad": broken}, ttl=60)
    assert await cache.get("a") == "A"
    assert await cache.get("present") == "already"
    assert present.calls == 0
    assert await cache.get("bad") is None


async def test_warm_on_start(make_cache: MakeCache) -> None:
    cache = await make_cache()
    await cache.close()
    cache.namespace("cfg").warm_on_start({"flags": CountingLoader({"beta": True})})
    await cache.start()
    assert await cache.get("cfg:flags") == {"beta": True}


async def test_metrics_count_hits_misses_and_stale(
    make_cache: MakeCache, cache_clock: ManualClock
) -> None:
    cache = await make_cache()
    await cache.get_or_set("k", CountingLoader("v"), ttl=30, stale_ttl=30)
    await cache.get_or_set("k", CountingLoader("v"), ttl=30, stale_ttl=30)
    cache_clock.advance(31)
    await cache.get_or_set("k", CountingLoader("v"), ttl=60)
    cache.report_metrics()
    registry = cache.metrics.registry

    def count(tier: str, result: str) -> float:
        value = registry.get_sample_value(
            "bastion_cache_requests_total", {"cache": tier, "result": result}
        )
        return value or 0.0

    tier = "l1" if "l1" in cache.tiers else "l2"
    assert count(tier, "miss") == 1
    assert count(tier, "hit") == 1
    assert count(tier, "stale") == 1
    loaded = registry.get_sample_value("bastion_cache_loader_seconds_count", {"cache": "default"})
    assert loaded is not None
    assert loaded >= 1
    if cache.l1 is not None:
        entries = registry.get_sample_value("bastion_cache_entries", {"cache": "l1"})
        assert entries == 1


async def test_zero_ttl_stores_nothing(make_cache: MakeCache) -> None:
    cache = await make_cache()
    await cache.set("k", "v")
    await cache.set("k", "v2", ttl=0)
    assert await cache.get("k") is None


def shape_of(cache: Cache) -> str:
    return "+".join(cache.tiers)


async def test_each_shape_has_its_tiers(make_cache: MakeCache) -> None:
    cache = await make_cache()
    expected = {"l1": "l1", "l2": "l2", "tiered": "l1+l2"}[make_cache.shape]
    assert shape_of(cache) == expected

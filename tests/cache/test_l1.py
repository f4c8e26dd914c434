"""The in-process tier: bounds, expiry, tags and prefixes, and W-TinyLFU admission."""

from __future__ import annotations

import random

import pytest

from bastion.cache.l1 import L1, FrequencySketch, L1Entry

NOW = 1_700_000_000.0


def entry(key: str, *, size: int = 1, ttl: float = 60.0, tags: tuple[str, ...] = ()) -> L1Entry:
    return L1Entry(key, key, fresh_until=NOW + ttl, stale_until=NOW + ttl, size=size, tags=tags)


def test_get_returns_what_was_put_and_counts_nothing_as_evicted() -> None:
    l1 = L1(100)
    l1.put(entry("a"))
    found = l1.get("a", NOW)
    assert found is not None
    assert found.value == "a"
    assert l1.get("b", NOW) is None
    assert l1.evictions == 0


def test_entry_bound_holds() -> None:
    l1 = L1(50)
    for index in range(1000):
        l1.put(entry(f"k{index}"))
        assert len(l1) <= 50
    assert l1.evictions == 950


def test_byte_bound_holds_and_oversized_entries_are_not_kept() -> None:
    l1 = L1(1000, max_bytes=1000)
    for index in range(100):
        l1.put(entry(f"k{index}", size=64))
        assert l1.bytes <= 1000
    assert l1.bytes == sum(e.size for e in (l1.peek(f"k{i}") for i in range(100)) if e)
    l1.put(entry("huge", size=1001))
    assert "huge" not in l1


def test_replacing_an_entry_updates_bytes_and_tags() -> None:
    l1 = L1(10)
    l1.put(entry("a", size=10, tags=("t1",)))
    l1.put(entry("a", size=3, tags=("t2",)))
    assert l1.bytes == 3
    assert l1.remove_tag("t1") == []
    assert l1.remove_tag("t2") == ["a"]
    assert l1.bytes == 0


def test_expired_entries_are_dropped_on_access() -> None:
    l1 = L1(10)
    l1.put(entry("a", ttl=1.0))
    assert l1.get("a", NOW + 0.5) is not None
    assert l1.get("a", NOW + 1.0) is None
    assert "a" not in l1
    assert l1.expirations == 1


def test_sweep_drops_expired_entries_without_an_access() -> None:
    l1 = L1(100)
    for index in range(10):
        l1.put(entry(f"short{index}", ttl=1.0, tags=("t",)))
    l1.put(entry("long", ttl=60.0, size=5))
    assert l1.sweep(NOW + 0.5) == 0
    assert l1.sweep(NOW + 2.0) == 10
    assert len(l1) == 1
    assert l1.bytes == 5
    assert l1.expirations == 10
    assert l1.remove_tag("t") == []


def test_tags_and_prefixes_remove_exactly_their_entries() -> None:
    l1 = L1(100)
    l1.put(entry("user:1:profile", tags=("user:1",)))
    l1.put(entry("user:1:orders", tags=("user:1", "orders")))
    l1.put(entry("user:2:profile", tags=("user:2",)))
    l1.put(entry("user:10:profile", tags=("user:10",)))
    assert sorted(l1.remove_tag("user:1")) == ["user:1:orders", "user:1:profile"]
    assert l1.remove_tag("orders") == []
    assert sorted(l1.remove_prefix("user:1")) == ["user:10:profile"]
    assert "user:2:profile" in l1
    l1.clear()
    assert len(l1) == 0
    assert l1.bytes == 0


def test_sketch_counts_repeat_visitors_and_ages() -> None:
    sketch = FrequencySketch(1000)
    assert sketch.frequency("hot") == 0
    for _ in range(10):
        sketch.increment("hot")
    sketch.increment("once")
    assert sketch.frequency("hot") >= 10
    assert sketch.frequency("once") == 1
    for index in range(20_000):
        sketch.increment(f"noise{index}")
    assert sketch.frequency("hot") < 10


def test_a_scan_of_one_off_keys_does_not_flush_the_hot_set() -> None:
    """Plain LRU would lose every hot key to a scan longer than the cache; TinyLFU admission
    keeps them because the scan's keys are seen once."""
    l1 = L1(1000)
    hot = [f"hot{index}" for index in range(800)]
    for _ in range(5):
        for key in hot:
            if l1.get(key, NOW) is None:
                l1.put(entry(key))
    for index in range(10_000):
        key = f"scan{index}"
        if l1.get(key, NOW) is None:
            l1.put(entry(key))
    kept = sum(1 for key in hot if key in l1)
    assert kept >= 780


def test_hit_rate_beats_lru_on_a_skewed_workload() -> None:
    """A Zipf-like workload over 20x the capacity: W-TinyLFU keeps the head better than LRU."""
    rng = random.Random(7)
    keys = [f"k{index}" for index in range(20_000)]
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(keys))]
    stream = rng.choices(keys, weights=weights, k=60_000)
    l1 = L1(1000)
    lru: dict[str, None] = {}
    tiny_hits = lru_hits = 0
    for key in stream:
        if l1.get(key, NOW) is not None:
            tiny_hits += 1
        else:
            l1.put(entry(key))
        if key in lru:
            lru_hits += 1
            lru[key] = lru.pop(key)
        else:
            lru[key] = None
            if len(lru) > 1000:
                del lru[next(iter(lru))]
    assert tiny_hits > lru_hits


@pytest.mark.parametrize("max_entries", [1, 2, 3, 7, 100])
def test_tiny_capacities_stay_consistent(max_entries: int) -> None:
    l1 = L1(max_entries, max_bytes=max_entries * 10)
    rng = random.Random(max_entries)
    for _ in range(2000):
        key = f"k{rng.randrange(50)}"
        action = rng.random()
        if action < 0.6:
            if l1.get(key, NOW) is None:
                l1.put(entry(key, size=rng.randrange(1, 15), tags=(f"t{rng.randrange(5)}",)))
        elif action < 0.8:
            l1.remove(key)
        elif action < 0.9:
            l1.remove_tag(f"t{rng.randrange(5)}")
        else:
            l1.remove_prefix(f"k{rng.randrange(5)}")
        assert len(l1) <= max_entries
        assert l1.bytes <= max_entries * 10
    held = [l1.peek(f"k{index}") for index in range(50)]
    assert l1.bytes == sum(e.size for e in held if e is not None)


def test_zero_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        L1(0)

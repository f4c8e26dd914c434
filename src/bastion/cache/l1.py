"""The in-process tier: a W-TinyLFU cache bounded by entries and bytes, with per-entry expiry.

The layout follows Caffeine's (Einziger, Friedman, Manes: *TinyLFU: A Highly Efficient Cache
Admission Policy*, 2017): new entries enter a small LRU *window* (1% of the entries); an entry
pushed out of the window is admitted to the *main* segmented LRU only if a frequency sketch says
it has been asked for more often than the main region's eviction victim. The main region keeps
entries seen twice in *protected* (80%) and the rest in *probation*. The sketch is a count-min
sketch of 4 rows of small counters behind a *doorkeeper* (a one-bit-per-slot filter that absorbs
the first sighting of a key, so one-off keys never reach the sketch); every ``10 * max_entries``
recorded accesses all counters are halved and the doorkeeper cleared, so popularity ages.

On a Zipf(1.1) workload this keeps the hit rate near that of an oracle holding the most popular
keys, where plain LRU loses a few points to one-off keys flushing hot ones (``bench/cache.py``).

The hit path (:meth:`L1.get`) is one dict look-up, an expiry check, the sketch update and an
``OrderedDict.move_to_end``; it runs on the event loop thread only, so nothing is locked.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["L1", "L1Entry"]

_WINDOW = 0
_PROBATION = 1
_PROTECTED = 2

_COUNTER_MAX = 15
_ROWS = 4
_HALVE = bytes(value >> 1 for value in range(256))
"""``bytes.translate`` table that halves every counter in one C call."""
_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15
"""Fibonacci hashing constant: spreads ``hash(key)`` into the bits of the third and fourth rows."""
_ADMIT_FLOOR = 5
_ADMIT_JITTER = 127
"""Caffeine's defence against hash flooding: a candidate warmer than ``_ADMIT_FLOOR`` that loses
the frequency duel is still admitted once in 128 tries, so an attacker cannot pin a victim."""


class L1Entry:
    """One cached value with its expiry times (wall clock, seconds since the epoch)."""

    __slots__ = (
        "delta",
        "early_at",
        "fresh_until",
        "key",
        "region",
        "size",
        "stale_until",
        "tags",
        "value",
    )

    def __init__(
        self,
        key: str,
        value: object,
        *,
        fresh_until: float,
        stale_until: float,
        size: int,
        tags: tuple[str, ...] = (),
        early_at: float = float("inf"),
        delta: float = 0.0,
    ) -> None:
        self.key = key
        self.value = value
        self.fresh_until = fresh_until
        """Until then the entry is fresh."""
        self.stale_until = stale_until
        """Until then the entry may be served stale while it is refreshed; then it is gone."""
        self.size = size
        self.tags = tags
        self.early_at = early_at
        """From then on a hit may refresh the entry early (probabilistic early refresh)."""
        self.delta = delta
        """Seconds the loader took to produce the value (scales early refresh)."""
        self.region = _WINDOW


class FrequencySketch:
    """Count-min sketch of 4-bit-range counters (bytes capped at 15) with a doorkeeper."""

    def __init__(self, capacity: int) -> None:
        width = 64
        while width < capacity:
            width <<= 1
        self._width = width
        self._mask = width - 1
        self._table = bytearray(width * _ROWS)
        door = 64
        while door < capacity * 8:
            door <<= 1
        self._door = bytearray(door)
        self._door_mask = door - 1
        self._sample = max(10 * capacity, 64)
        self._additions = 0

    def increment(self, key: str) -> None:
        """Record one access of ``key``."""
        h = hash(key)
        door = self._door
        slot = h & self._door_mask
        if not door[slot]:
            door[slot] = 1
        else:
            table = self._table
            mask = self._mask
            width = self._width
            g = ((h & _MASK64) * _MIX) & _MASK64
            a = h & mask
            b = width + ((h >> 32) & mask)
            c = 2 * width + ((g >> 20) & mask)
            d = 3 * width + ((g >> 42) & mask)
            if table[a] < _COUNTER_MAX:
                table[a] += 1
            if table[b] < _COUNTER_MAX:
                table[b] += 1
            if table[c] < _COUNTER_MAX:
                table[c] += 1
            if table[d] < _COUNTER_MAX:
                table[d] += 1
        self._additions += 1
        if self._additions >= self._sample:
            self._reset()

    def frequency(self, key: str) -> int:
        """Estimated recent accesses of ``key`` (an over-estimate, never an under-estimate)."""
        h = hash(key)
        seen = self._door[h & self._door_mask]
        if not seen:
            return 0
        table = self._table
        mask = self._mask
        width = self._width
        g = ((h & _MASK64) * _MIX) & _MASK64
        return 1 + min(
            table[h & mask],
            table[width + ((h >> 32) & mask)],
            table[2 * width + ((g >> 20) & mask)],
            table[3 * width + ((g >> 42) & mask)],
        )

    def _reset(self) -> None:
        self._table = bytearray(self._table.translate(_HALVE))
        self._door = bytearray(len(self._door))
        self._additions //= 2


class L1:
    """W-TinyLFU cache of :class:`L1Entry`, bounded by ``max_entries`` and ``max_bytes``.

    ``max_bytes`` counts the serialized size of values (what Redis would hold), not Python's
    object overhead; 0 leaves only the entry bound. An entry larger than ``max_bytes`` is not
    kept. Counters (``evictions``, ``expirations``) are plain ints read by the metrics report.
    """

    def __init__(self, max_entries: int, max_bytes: int = 0) -> None:
        if max_entries < 1:
            raise ValueError("an L1 holds at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._window_cap = max(1, max_entries // 100)
        main = max(1, max_entries - self._window_cap)
        self._protected_cap = max(1, main * 8 // 10)
        self._data: dict[str, L1Entry] = {}
        self._window: OrderedDict[str, L1Entry] = OrderedDict()
        self._probation: OrderedDict[str, L1Entry] = OrderedDict()
        self._protected: OrderedDict[str, L1Entry] = OrderedDict()
        self._tags: dict[str, set[str]] = {}
        self._sketch = FrequencySketch(max_entries)
        self._random = random.Random()  # noqa: S311 - admission jitter, not a secret
        self.bytes = 0
        """Serialized bytes of the values held."""
        self.evictions = 0
        """Entries dropped to stay within the bounds (or refused admission)."""
        self.expirations = 0
        """Entries dropped because they expired."""

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, now: float) -> L1Entry | None:
        """The entry of ``key`` unless it is missing or past ``stale_until``; records the
        access (hits and misses both count for admission)."""
        self._sketch.increment(key)
        entry = self._data.get(key)
        if entry is None:
            return None
        if now >= entry.stale_until:
            self._unlink(entry)
            self.expirations += 1
            return None
        region = entry.region
        if region == _PROTECTED:
            self._protected.move_to_end(key)
        elif region == _WINDOW:
            self._window.move_to_end(key)
        else:
            self._promote(entry)
        return entry

    def peek(self, key: str) -> L1Entry | None:
        """The entry of ``key``, expired or not, without recording an access."""
        return self._data.get(key)

    def put(self, entry: L1Entry) -> None:
        """Insert or replace ``entry.key``, then evict what the bounds require."""
        if self.max_bytes and entry.size > self.max_bytes:
            self.remove(entry.key)
            return
        old = self._data.get(entry.key)
        if old is not None:
            self._unlink(old)
            # A replaced entry keeps its place: an update is not a new arrival.
            entry.region = old.region
            if old.region == _PROTECTED:
                self._protected[entry.key] = entry
            elif old.region == _PROBATION:
                self._probation[entry.key] = entry
            else:
                self._window[entry.key] = entry
        else:
            entry.region = _WINDOW
            self._window[entry.key] = entry
        self._data[entry.key] = entry
        self.bytes += entry.size
        for tag in entry.tags:
            keys = self._tags.get(tag)
            if keys is None:
                self._tags[tag] = {entry.key}
            else:
                keys.add(entry.key)
        if len(self._window) > self._window_cap:
            self._drain_window()
        if len(self._data) > self.max_entries:
            self._evict_over()
        if self.max_bytes and self.bytes > self.max_bytes:
            self._shed_bytes(entry.key)

    def remove(self, key: str) -> bool:
        """Drop ``key``; whether it was held."""
        entry = self._data.get(key)
        if entry is None:
            return False
        self._unlink(entry)
        return True

    def remove_tag(self, tag: str) -> list[str]:
        """Drop every entry tagged ``tag``; the keys dropped."""
        keys = list(self._tags.get(tag, ()))
        for key in keys:
            self.remove(key)
        return keys

    def remove_prefix(self, prefix: str) -> list[str]:
        """Drop every entry whose key starts with ``prefix``; the keys dropped."""
        keys = [key for key in self._data if key.startswith(prefix)]
        for key in keys:
            self.remove(key)
        return keys

    def remove_many(self, keys: Iterable[str]) -> int:
        """Drop each of ``keys`` that is held; how many were."""
        return sum(1 for key in keys if self.remove(key))

    def sweep(self, now: float, budget: int = 1000) -> int:
        """Drop expired entries among the ``budget`` least recently used of each region (where
        expired entries gather); how many were dropped. Run periodically, it returns the memory
        of entries nobody asks for any more without walking the whole cache."""
        expired: list[L1Entry] = []
        for region in (self._window, self._probation, self._protected):
            expired.extend(
                entry
                for entry in itertools.islice(region.values(), budget)
                if now >= entry.stale_until
            )
        for entry in expired:
            self._unlink(entry)
        self.expirations += len(expired)
        return len(expired)

    def clear(self) -> None:
        """Drop everything (the frequency sketch stays: popularity outlives invalidation)."""
        self._data.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._tags.clear()
        self.bytes = 0

    def _region(self, entry: L1Entry) -> OrderedDict[str, L1Entry]:
        if entry.region == _PROTECTED:
            return self._protected
        if entry.region == _PROBATION:
            return self._probation
        return self._window

    def _unlink(self, entry: L1Entry) -> None:
        key = entry.key
        del self._data[key]
        del self._region(entry)[key]
        self.bytes -= entry.size
        for tag in entry.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

    def _promote(self, entry: L1Entry) -> None:
        """A probation hit moves to protected; protected's overflow goes back to probation."""
        key = entry.key
        del self._probation[key]
        entry.region = _PROTECTED
        self._protected[key] = entry
        if len(self._protected) > self._protected_cap:
            _, demoted = self._protected.popitem(last=False)
            demoted.region = _PROBATION
            self._probation[demoted.key] = demoted

    def _drain_window(self) -> None:
        """Move the window's overflow into the main region through the admission duel."""
        while len(self._window) > self._window_cap:
            _, candidate = self._window.popitem(last=False)
            candidate.region = _PROBATION
            self._probation[candidate.key] = candidate
            if len(self._data) <= self.max_entries:
                continue
            if len(self._probation) > 1:
                victim = next(iter(self._probation.values()))
            elif self._protected:
                victim = next(iter(self._protected.values()))
            else:
                continue
            if self._admit(candidate.key, victim.key):
                self._unlink(victim)
            else:
                self._unlink(candidate)
            self.evictions += 1

    def _evict_over(self) -> None:
        """Tiny capacities, where the duel found no victim: drop the coldest until within."""
        while len(self._data) > self.max_entries:
            region = self._probation or self._protected or self._window
            self._unlink(next(iter(region.values())))
            self.evictions += 1

    def _admit(self, candidate: str, victim: str) -> bool:
        candidate_freq = self._sketch.frequency(candidate)
        victim_freq = self._sketch.frequency(victim)
        if candidate_freq > victim_freq:
            return True
        if candidate_freq <= _ADMIT_FLOOR:
            return False
        return (self._random.getrandbits(7) & _ADMIT_JITTER) == 0

    def _shed_bytes(self, keep: str) -> None:
        """Evict until within ``max_bytes``: coldest probation first, then the window's oldest,
        then protected; the entry just written goes last."""
        for region in (self._probation, self._window, self._protected):
            while self.bytes > self.max_bytes and region:
                key = next(iter(region))
                if key == keep:
                    if len(region) == 1:
                        break
                    region.move_to_end(key)  # it was just written: the most recent anyway
                    continue
                self._unlink(self._data[key])
                self.evictions += 1
        if self.bytes > self.max_bytes:
            self.remove(keep)
            self.evictions += 1

"""The public :class:`Cache`: L1 in process, L2 in Redis, one API over both.

Reads try L1, then L2 (filling L1), then the loader of :meth:`Cache.get_or_set`. Writes go to
both tiers and tell every other instance to evict the key from its L1. Concurrent misses of one
key run its loader once per process (a shared task) and, with Redis, once across instances (a
short lock: the others wait for the winner's value). Entries may stay *stale* for ``stale_ttl``
after their freshness: a ``get_or_set`` then returns the stale value at once and refreshes it in
the background; shortly before expiry a hit may also refresh early, with a probability growing
as expiry nears (XFetch), so a hot key is reloaded by one caller before it expires for all.

Redis failures never reach callers: the call is answered by L1 (and the loader), counted in
``bastion_store_errors_total{store="cache"}`` and ``bastion_cache_requests_total{cache="l2",
result="error"}``; writes and invalidations that could not reach Redis are replayed when it
answers again (up to a bound), and L1 is cleared when the invalidation channel comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from bastion.cache.config import CacheConfig
from bastion.cache.invalidation import (
    Invalidation,
    InvalidationBus,
    encode_all,
    encode_keys,
    encode_prefix,
    encode_tag,
)
from bastion.cache.l1 import L1, L1Entry
from bastion.cache.l2 import CacheStoreError, RedisTier
from bastion.cache.serial import SerializationError, Serializer
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics

__all__ = ["Cache", "CachedValue", "Entry", "Loader", "Uncacheable"]

Loader = Callable[[], Awaitable[Any]]
"""A coroutine function producing the value of a key: a plain value, an :class:`Entry` or an
:class:`Uncacheable`."""

_log: Any = get_logger("bastion.cache")

_RECORD = struct.Struct(">BdddH")
"""Redis record header: version, fresh_until, stale_until, loader seconds, tags JSON length."""
_RECORD_VERSION = 1
_MAX_TAGS_JSON = 0xFFFF
_EARLY_HORIZON = 10.0
"""XFetch refreshes with probability ``exp(-remaining / (delta * beta))``; below
``exp(-10)`` (remaining > 10 * delta * beta) the check is skipped altogether."""
_PENDING_MAX = 10_000
_WARM_CONCURRENCY = 8
_REPORT_INTERVAL = 1.0
_WAIT_MIN = 0.005
_WAIT_MAX = 0.1
_LOADER_LABELS_MAX = 100
_HEALTH_CHECK_INTERVAL = 15

_time = time.time


@dataclass(frozen=True, slots=True)
class Entry:
    """What a loader returns to decide, after seeing the value, how it is cached.

    ``None`` fields fall back to the arguments of the ``get_or_set`` call."""

    value: Any
    ttl: float | None = None
    """Seconds the value is fresh."""
    tags: Iterable[str] | None = None
    """Tags of the entry (replacing the call's)."""
    stale_ttl: float | None = None
    """Seconds after freshness during which the value is served stale while refreshed."""


@dataclass(frozen=True, slots=True)
class Uncacheable:
    """What a loader returns to hand ``value`` to every waiting caller without storing it."""

    value: Any


@dataclass(frozen=True, slots=True)
class CachedValue:
    """An entry as :meth:`Cache.get_entry` finds it, fresh or stale."""

    value: Any
    fresh_until: float
    """Wall-clock time (seconds since the epoch) the entry is fresh until."""
    stale_until: float
    """Wall-clock time the entry may be served stale until."""
    tags: tuple[str, ...] = ()

    @property
    def fresh(self) -> bool:
        return _time() < self.fresh_until


@dataclass(slots=True)
class _Call:
    """The options of one ``get_or_set`` miss, resolved against the configuration."""

    loader: Loader
    ttl: float
    stale_ttl: float
    negative_ttl: float
    tags: tuple[str, ...]
    namespace: str
    label: str


@dataclass(slots=True)
class _Stats:
    """Counters of the hot paths as plain ints; reported to Prometheus every second."""

    l1_hit: int = 0
    l1_stale: int = 0
    l1_miss: int = 0
    l2_hit: int = 0
    l2_stale: int = 0
    l2_miss: int = 0
    l2_error: int = 0
    reported: dict[str, int] = field(default_factory=dict)


class _Core:
    """State shared by a cache and all its namespace views."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        redis: Redis | None,
        metrics: Metrics | None,
        timeout: float | None,
        owns_redis: bool,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.serializer = Serializer(
            compress_threshold=config.compress_threshold, level=config.compress_level
        )
        self.l1 = L1(config.l1_max_entries, config.l1_max_bytes) if config.l1_max_entries else None
        self.redis = redis
        self.owns_redis = owns_redis
        self.l2: RedisTier | None = None
        self.bus: InvalidationBus | None = None
        self.sender = ""
        if redis is not None:
            self.l2 = RedisTier(
                redis,
                prefix=config.key_prefix,
                channel=config.invalidation_channel,
                timeout=min(config.timeout, timeout) if timeout else config.timeout,
                retry_after=config.retry_after,
                metrics=self.metrics,
                on_recover=self.recovered,
            )
            self.bus = InvalidationBus(
                redis,
                config.invalidation_channel,
                on_message=self.on_invalidation,
                on_resubscribed=self.resubscribed,
            )
            self.sender = self.bus.sender
        self.stats = _Stats()
        self.flights: dict[str, asyncio.Future[Any]] = {}
        self.refreshing: set[str] = set()
        self.waiters: dict[str, asyncio.Event] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reads: dict[str, list[list[bool]]] = {}
        """L2 reads in progress, per key: a flag each, set when the key is invalidated during
        the read (its result then does not fill L1: it may be the value just invalidated)."""
        self.pending: list[tuple[str, str]] = []
        """Invalidations that could not reach Redis, replayed when it answers: (kind, value)."""
        self.pending_overflow = False
        self.warmers: list[tuple[Mapping[str, Loader], float | None, Cache]] = []
        self.started = False
        self.reporter: asyncio.Task[None] | None = None
        self.early_beta = config.early_refresh
        self.random = random.Random()  # noqa: S311 - refresh timing, not a secret
        self.loader_labels: dict[str, Any] = {}

    # -- invalidation from other instances ------------------------------------------------

    def begin_read(self, key: str) -> list[bool]:
        flag = [False]
        self.reads.setdefault(key, []).append(flag)
        return flag

    def end_read(self, key: str, flag: list[bool]) -> None:
        flags = self.reads[key]
        flags.remove(flag)
        if not flags:
            del self.reads[key]

    def invalidated(self, keys: Iterable[str] | None = None, prefix: str | None = None) -> None:
        """Mark the reads in progress of ``keys``, of keys under ``prefix``, or (neither
        given: a tag, whose keys a read only learns at its end) all of them."""
        reads = self.reads
        if not reads:
            return
        if keys is not None:
            matching = [reads[key] for key in keys if key in reads]
        elif prefix is not None:
            matching = [flags for key, flags in reads.items() if key.startswith(prefix)]
        else:
            matching = list(reads.values())
        for flags in matching:
            for flag in flags:
                flag[0] = True

    def on_invalidation(self, message: Invalidation) -> None:
        l1 = self.l1
        if message.keys:
            self.invalidated(keys=message.keys)
        elif message.prefix is not None:
            self.invalidated(prefix=message.prefix)
        else:
            self.invalidated()
        if message.keys:
            if l1 is not None:
                l1.remove_many(message.keys)
            for key in message.keys:
                waiter = self.waiters.get(key)
                if waiter is not None:
                    waiter.set()
        elif message.tag is not None:
            if l1 is not None:
                l1.remove_tag(message.tag)
        elif message.prefix is not None:
            if l1 is not None:
                l1.remove_prefix(message.prefix)
        elif message.everything and l1 is not None:
            l1.clear()

    def resubscribed(self) -> None:
        """Messages may have been missed while the subscription was down."""
        self.invalidated()
        if self.l1 is not None:
            self.l1.clear()
        self.recovered()

    def recovered(self) -> None:
        if self.pending or self.pending_overflow:
            self.spawn(self.replay())

    def remember(self, kind: str, value: str) -> None:
        if len(self.pending) >= _PENDING_MAX:
            self.pending_overflow = True
            return
        self.pending.append((kind, value))

    async def replay(self) -> None:
        """Apply to Redis the invalidations made while it was down."""
        l2 = self.l2
        if l2 is None:
            return
        pending, self.pending = self.pending, []
        overflow, self.pending_overflow = self.pending_overflow, False
        try:
            keys = [value for kind, value in pending if kind == "k"]
            for start in range(0, len(keys), 500):
                batch = keys[start : start + 500]
                await l2.delete(batch, message=encode_keys(self.sender, batch))
            for kind, value in pending:
                if kind == "t":
                    await l2.invalidate_tag(value, message=encode_tag(self.sender, value))
                elif kind == "p":
                    await l2.invalidate_prefix(value, message=encode_prefix(self.sender, value))
            if overflow:
                # Too many to remember: every instance drops its L1; Redis keeps what it has
                # until it expires.
                await l2.publish(encode_all(self.sender))
        except CacheStoreError:
            self.pending = pending + self.pending
            self.pending_overflow = self.pending_overflow or overflow
            return
        if pending:
            _log.info("cache: invalidations made while redis was down applied", count=len(pending))

    # -- records -----------------------------------------------------------------------------

    def early_at(self, fresh_until: float, delta: float) -> float:
        if delta <= 0.0 or self.early_beta <= 0.0:
            return math.inf
        return fresh_until - delta * self.early_beta * _EARLY_HORIZON

    def refresh_now(self, entry: L1Entry, now: float) -> bool:
        """XFetch: ``now - delta * beta * ln(U) >= fresh_until``."""
        gap = entry.delta * self.early_beta * -math.log(1.0 - self.random.random())
        return now + gap >= entry.fresh_until

    def encode_record(
        self,
        data: bytes,
        fresh_until: float,
        stale_until: float,
        delta: float,
        tags: tuple[str, ...],
    ) -> bytes:
        tag_json = orjson.dumps(tags) if tags else b""
        if len(tag_json) > _MAX_TAGS_JSON:
            raise SerializationError("the tags of one entry exceed 64 KiB")
        return (
            _RECORD.pack(_RECORD_VERSION, fresh_until, stale_until, delta, len(tag_json))
            + tag_json
            + data
        )

    def decode_record(self, key: str, record: bytes) -> L1Entry:
        try:
            version, fresh_until, stale_until, delta, tag_len = _RECORD.unpack_from(record)
        except struct.error:
            raise SerializationError("corrupt cache record: short header") from None
        if version != _RECORD_VERSION:
            raise SerializationError(f"unknown cache record version {version}")
        start = _RECORD.size
        tags: tuple[str, ...] = ()
        if tag_len:
            try:
                listed = orjson.loads(record[start : start + tag_len])
            except orjson.JSONDecodeError:
                listed = None
            if type(listed) is not list or not all(type(tag) is str for tag in listed):
                raise SerializationError("corrupt cache record: tags")
            tags = tuple(listed)
        data = record[start + tag_len :]
        return L1Entry(
            key,
            self.serializer.loads(data),
            fresh_until=fresh_until,
            stale_until=stale_until,
            size=len(data),
            tags=tags,
            early_at=self.early_at(fresh_until, delta),
            delta=delta,
        )

    # -- tasks and metrics -------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def loader_child(self, label: str) -> Any:
        child = self.loader_labels.get(label)
        if child is None:
            if len(self.loader_labels) >= _LOADER_LABELS_MAX:
                label = "other"
            child = self.metrics.cache_loader_seconds.labels(label)
            self.loader_labels[label] = child
        return child

    def report(self) -> None:
        """Hand the counters' growth since the last report, and the sizes, to Prometheus."""
        stats = self.stats
        metrics = self.metrics
        reported = stats.reported
        for name in ("l1_hit", "l1_stale", "l1_miss", "l2_hit", "l2_stale", "l2_miss", "l2_error"):
            value = getattr(stats, name)
            grown = value - reported.get(name, 0)
            if grown:
                tier, result = name.split("_")
                metrics.cache_request(tier, result, grown)
                reported[name] = value
        l1 = self.l1
        if l1 is not None:
            metrics.cache_size("l1", len(l1), l1.bytes)
            for reason, value in (("size", l1.evictions), ("expired", l1.expirations)):
                grown = value - reported.get(reason, 0)
                if grown:
                    metrics.cache_evicted("l1", reason, grown)
                    reported[reason] = value
        if self.l2 is not None:
            metrics.cache_l2_up.set(0 if self.l2.failing else 1)

    async def report_loop(self) -> None:
        """Every second: drop some expired L1 entries, then report."""
        while True:
            await asyncio.sleep(_REPORT_INTERVAL)
            if self.l1 is not None:
                self.l1.sweep(_time())
            self.report()


class Cache:
    """A tiered cache; see the module docstring. Build one with :meth:`from_url` or through the
    engine (``Bastion(settings).cache``), call :meth:`start` before use in a long-running
    process (it subscribes to invalidations) and :meth:`close` at the end.

    Values must round-trip through :mod:`bastion.cache.serial` (JSON-able data and bytes); L1
    hands back the very object stored, so treat cached values as immutable.
    """

    __slots__ = ("_core", "_label", "_ns")

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        redis: Redis | None = None,
        metrics: Metrics | None = None,
        timeout: float | None = None,
        owns_redis: bool = False,
    ) -> None:
        """``redis`` is the shared tier's client (none: L1 only, unless ``config.store`` says
        ``redis``, which then is an error); ``timeout`` caps ``config.timeout``
        (``store.timeout``); ``owns_redis`` closes the client in :meth:`close`."""
        config = config if config is not None else CacheConfig()
        if config.store == "redis" and redis is None:
            raise ValueError("cache.store = 'redis' needs store.redis_url")
        if config.store == "memory":
            redis = None
        if redis is None and config.l1_max_entries == 0:
            raise ValueError("cache.l1_max_entries = 0 needs Redis (store.redis_url)")
        self._core = _Core(
            config, redis=redis, metrics=metrics, timeout=timeout, owns_redis=owns_redis
        )
        self._ns = ""
        self._label = "default"

    @classmethod
    def from_url(
        cls,
        redis_url: str = "",
        config: CacheConfig | None = None,
        *,
        metrics: Metrics | None = None,
        timeout: float = 2.0,
    ) -> Cache:
        """A cache over the Redis at ``redis_url`` (empty: L1 only), owning its client."""
        client = (
            Redis.from_url(
                redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # Idle connections (the subscription above all) are checked before reuse, so a
                # frozen Redis is noticed.
                health_check_interval=_HEALTH_CHECK_INTERVAL,
            )
            if redis_url
            else None
        )
        return cls(config, redis=client, metrics=metrics, timeout=timeout, owns_redis=True)

    @property
    def config(self) -> CacheConfig:
        return self._core.config

    @property
    def tiers(self) -> tuple[str, ...]:
        """``("l1",)``, ``("l2",)`` or ``("l1", "l2")``."""
        core = self._core
        return tuple(name for name, tier in (("l1", core.l1), ("l2", core.l2)) if tier is not None)

    @property
    def l1(self) -> L1 | None:
        """The in-process tier (``None`` when turned off)."""
        return self._core.l1

    @property
    def degraded(self) -> bool:
        """Whether the Redis tier is configured but failing (calls are answered without it)."""
        l2 = self._core.l2
        return l2 is not None and l2.failing

    @property
    def metrics(self) -> Metrics:
        return self._core.metrics

    @property
    def prefix(self) -> str:
        """The key prefix of this view (``""`` for the root cache)."""
        return self._ns

    def namespace(self, name: str) -> Cache:
        """A view whose keys, tags and prefixes live under ``name:`` (nested views nest).

        Views share the tiers, counters and lifecycle of the root cache; loader latency is
        labelled with the outermost namespace's name."""
        if not name or ":" in name:
            raise ValueError("a namespace name is non-empty and holds no ':'")
        view = Cache.__new__(Cache)
        view._core = self._core
        view._ns = f"{self._ns}{name}:"
        view._label = name if not self._ns else self._label
        return view

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to invalidations (waiting at most the Redis timeout), start the metrics
        report, then run the warmers given to :meth:`warm_on_start`. Idempotent."""
        core = self._core
        if core.started:
            return
        core.started = True
        if core.bus is not None and core.l2 is not None:
            await core.bus.start(wait=core.l2.timeout)
        core.reporter = asyncio.create_task(core.report_loop(), name="bastion-cache-report")
        for loaders, ttl, view in core.warmers:
            await view.warm(loaders, ttl=ttl)

    async def close(self) -> None:
        """Stop background work, report the last counts, close an owned Redis client."""
        core = self._core
        if core.reporter is not None:
            core.reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await core.reporter
            core.reporter = None
        for task in list(core.tasks):
            task.cancel()
        if core.tasks:
            await asyncio.gather(*core.tasks, return_exceptions=True)
        if core.bus is not None:
            await core.bus.close()
        core.report()
        if core.owns_redis and core.redis is not None:
            await core.redis.aclose()
        core.started = False

    def report_metrics(self) -> None:
        """Hand counters and sizes to Prometheus now (:meth:`start` does it every second)."""
        self._core.report()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default``."""
        core = self._core
        full = self._ns + key
        l1 = core.l1
        if l1 is not None:
            now = _time()
            entry = l1.get(full, now)
            if entry is not None and now < entry.fresh_until:
                core.stats.l1_hit += 1
                return entry.value
            core.stats.l1_miss += 1
        if core.l2 is None:
            return default
        found = await self._l2_read(full)
        if found is None or _time() >= found.fresh_until:
            if found is not None:
                core.stats.l2_miss += 1
            return default
        core.stats.l2_hit += 1
        return found.value

    async def get_entry(self, key: str) -> CachedValue | None:
        """The entry of ``key`` with its expiry times, fresh or stale; ``None`` when absent."""
        core = self._core
        full = self._ns + key
        now = _time()
        entry = core.l1.get(full, now) if core.l1 is not None else None
        if entry is None and core.l2 is not None:
            entry = await self._l2_read(full)
            if entry is not None:
                if now < entry.fresh_until:
                    core.stats.l2_hit += 1
                else:
                    core.stats.l2_stale += 1
        elif entry is not None:
            if now < entry.fresh_until:
                core.stats.l1_hit += 1
            else:
                core.stats.l1_stale += 1
        if entry is None or now >= entry.stale_until:
            return None
        return CachedValue(entry.value, entry.fresh_until, entry.stale_until, entry.tags)

    async def _l2_read(self, full: str) -> L1Entry | None:
        """The L2 entry of ``full`` (filling L1), or ``None``; counts misses and errors."""
        core = self._core
        l2 = core.l2
        assert l2 is not None
        if not l2.usable:
            core.stats.l2_error += 1
            return None
        flag = core.begin_read(full)
        try:
            record = await l2.get(full)
        except CacheStoreError:
            core.stats.l2_error += 1
            return None
        finally:
            core.end_read(full, flag)
        if record is None:
            core.stats.l2_miss += 1
            return None
        try:
            entry = core.decode_record(full, record)
        except SerializationError as exc:
            _log.warning("cache: unreadable entry in redis ignored", error=str(exc))
            core.stats.l2_miss += 1
            return None
        if _time() >= entry.stale_until:
            core.stats.l2_miss += 1
            return None
        if core.l1 is not None and not flag[0]:
            core.l1.put(entry)
        return entry

    async def get_or_set(
        self,
        key: str,
        loader: Loader,
        *,
        ttl: float | None = None,
        stale_ttl: float = 0.0,
        negative_ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> Any:
        """The value of ``key``; on a miss, ``await loader()`` once for every concurrent caller
        (across instances with Redis) and store its result.

        The loader may return an :class:`Entry` to choose ttl, tags and stale_ttl after seeing
        the value, or :class:`Uncacheable` to hand the value out without storing it. ``None``
        is stored for ``negative_ttl`` (default ``cache.negative_ttl``; 0: not stored). A stale
        entry (within ``stale_ttl`` after its ``ttl``) is returned at once and refreshed in the
        background. A loader's exception reaches every caller waiting on it; nothing is stored.
        """
        core = self._core
        full = self._ns + key
        l1 = core.l1
        if l1 is not None:
            now = _time()
            entry = l1.get(full, now)
            if entry is not None:
                if now < entry.fresh_until:
                    core.stats.l1_hit += 1
                    if now >= entry.early_at and core.refresh_now(entry, now):
                        self._refresh(full, self._call(loader, ttl, stale_ttl, negative_ttl, tags))
                    return entry.value
                core.stats.l1_stale += 1
                self._refresh(full, self._call(loader, ttl, stale_ttl, negative_ttl, tags))
                return entry.value
            core.stats.l1_miss += 1
        flight = core.flights.get(full)
        if flight is None:
            call = self._call(loader, ttl, stale_ttl, negative_ttl, tags)
            flight = asyncio.ensure_future(self._fill(full, call))
            core.flights[full] = flight
            flight.add_done_callback(lambda done: _landed(core, full, done))
        return await asyncio.shield(flight)

    def _call(
        self,
        loader: Loader,
        ttl: float | None,
        stale_ttl: float,
        negative_ttl: float | None,
        tags: Iterable[str],
    ) -> _Call:
        config = self._core.config
        ns = self._ns
        return _Call(
            loader=loader,
            ttl=config.default_ttl if ttl is None else ttl,
            stale_ttl=stale_ttl,
            negative_ttl=config.negative_ttl if negative_ttl is None else negative_ttl,
            tags=tuple(ns + tag for tag in tags),
            namespace=ns,
            label=self._label,
        )

    async def _fill(self, full: str, call: _Call) -> Any:
        """One flight: L2, then (under the cross-instance lock) the loader."""
        core = self._core
        l2 = core.l2
        if l2 is None:
            return await self._load(full, call)
        found = await self._l2_read(full)
        if found is not None:
            now = _time()
            if now < found.fresh_until:
                core.stats.l2_hit += 1
                if now >= found.early_at and core.refresh_now(found, now):
                    self._refresh(full, call, in_flight=True)
            else:
                core.stats.l2_stale += 1
                self._refresh(full, call, in_flight=True)
            return found.value
        token = ""
        deadline = time.monotonic() + core.config.lock_ttl
        waited = False
        while l2.usable and time.monotonic() < deadline:
            try:
                taken = await l2.lock(full, core.config.lock_ttl)
            except CacheStoreError:
                break
            if taken is not None:
                token = taken
                if waited:
                    # The previous holder may have stored the value just before letting go.
                    found = await self._l2_read(full)
                    if found is not None:
                        with contextlib.suppress(CacheStoreError):
                            await l2.unlock(full, token)
                        return found.value
                break
            waited = True
            found = await self._await_peer(full, deadline)
            if found is not None:
                return found.value
        try:
            return await self._load(full, call)
        finally:
            if token:
                with contextlib.suppress(CacheStoreError):
                    await l2.unlock(full, token)

    async def _await_peer(self, full: str, deadline: float) -> L1Entry | None:
        """Another instance holds the lock of ``full``: wait for its value (woken by its
        invalidation message, polling as a fallback). ``None`` once the lock is gone without a
        value (the holder's loader failed or its value was not cacheable: the caller may take
        the lock in turn) or at ``deadline``."""
        core = self._core
        l2 = core.l2
        assert l2 is not None
        pause = _WAIT_MIN
        waiter = core.waiters.get(full)
        if waiter is None:
            waiter = core.waiters[full] = asyncio.Event()
        try:
            while time.monotonic() < deadline and l2.usable:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await waiter.wait()
                waiter.clear()
                found = await self._l2_read(full)
                if found is not None:
                    return found
                try:
                    if not await l2.locked(full):
                        return None
                except CacheStoreError:
                    return None
                pause = min(pause * 2, _WAIT_MAX)
        finally:
            if core.waiters.get(full) is waiter:
                del core.waiters[full]
        return None

    async def _load(self, full: str, call: _Call) -> Any:
        """Run the loader and store what it returns as it asks."""
        core = self._core
        started = time.perf_counter()
        result = await call.loader()
        delta = time.perf_counter() - started
        core.loader_child(call.label).observe(delta)
        if isinstance(result, Uncacheable):
            return result.value
        ttl, stale_ttl, tags = call.ttl, call.stale_ttl, call.tags
        if isinstance(result, Entry):
            value = result.value
            if result.ttl is not None:
                ttl = result.ttl
            if result.stale_ttl is not None:
                stale_ttl = result.stale_ttl
            if result.tags is not None:
                tags = tuple(call.namespace + tag for tag in result.tags)
        else:
            value = result
        if value is None and not (isinstance(result, Entry) and result.ttl is not None):
            ttl, stale_ttl = call.negative_ttl, 0.0
        await self._store(full, value, ttl, stale_ttl, tags, delta)
        return value

    def _refresh(self, full: str, call: _Call, *, in_flight: bool = False) -> None:
        """Reload ``full`` in the background unless this process already is (``in_flight``:
        called by the flight of ``full`` itself, which is about to land)."""
        core = self._core
        if full in core.refreshing or (not in_flight and full in core.flights):
            return
        core.refreshing.add(full)
        core.spawn(self._refresh_run(full, call))

    async def _refresh_run(self, full: str, call: _Call) -> None:
        core = self._core
        l2 = core.l2
        token: str | None = None
        try:
            if l2 is not None and l2.usable:
                try:
                    token = await l2.lock(full, core.config.lock_ttl)
                except CacheStoreError:
                    token = ""
                if token is None:
                    return  # another instance is refreshing it
            await self._load(full, call)
        except Exception as exc:
            _log.warning("cache: background refresh failed; the stale value stays", error=repr(exc))
        finally:
            core.refreshing.discard(full)
            if token and l2 is not None:
                with contextlib.suppress(CacheStoreError):
                    await l2.unlock(full, token)

    # -- writes --------------------------------------------------------------------------------

    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        stale_ttl: float = 0.0,
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (default ``cache.default_ttl``), then
        ``stale_ttl`` more as stale; other instances evict ``key`` from their L1.

        :class:`~bastion.cache.serial.SerializationError` when the value cannot be cached."""
        core = self._core
        await self._store(
            self._ns + key,
            value,
            core.config.default_ttl if ttl is None else ttl,
            stale_ttl,
            tuple(self._ns + tag for tag in tags),
            0.0,
        )

    async def _store(
        self,
        full: str,
        value: Any,
        ttl: float,
        stale_ttl: float,
        tags: tuple[str, ...],
        delta: float,
    ) -> None:
        core = self._core
        if type(value) is bytearray or type(value) is memoryview:
            value = bytes(value)
        data = core.serializer.dumps(value)
        ttl = max(ttl, 0.0)
        lifetime = ttl + max(stale_ttl, 0.0)
        core.invalidated(keys=(full,))
        if lifetime <= 0.0:
            await self._delete_keys([full])
            return
        now = _time()
        fresh_until = now + ttl
        stale_until = now + lifetime
        # Encoded first, so a refused entry (tags too large) is stored in no tier.
        record = core.encode_record(data, fresh_until, stale_until, delta, tags)
        if core.l1 is not None:
            core.l1.put(
                L1Entry(
                    full,
                    value,
                    fresh_until=fresh_until,
                    stale_until=stale_until,
                    size=len(data),
                    tags=tags,
                    early_at=core.early_at(fresh_until, delta),
                    delta=delta,
                )
            )
        l2 = core.l2
        if l2 is None:
            return
        try:
            await l2.set(
                full,
                record,
                ttl_ms=max(1, math.ceil(lifetime * 1000)),
                tags=tags,
                message=encode_keys(core.sender, [full]),
            )
        except CacheStoreError:
            # Redis may still hold an older value: delete it once Redis is back.
            core.remember("k", full)

    async def delete(self, key: str) -> None:
        """Remove ``key`` from both tiers and from every instance's L1."""
        await self._delete_keys([self._ns + key])

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove each of ``keys``; how many Redis held (without Redis: this process's L1)."""
        return await self._delete_keys([self._ns + key for key in keys])

    async def _delete_keys(self, keys: list[str]) -> int:
        core = self._core
        core.invalidated(keys=keys)
        removed = core.l1.remove_many(keys) if core.l1 is not None else 0
        if core.l2 is None:
            return removed
        try:
            return await core.l2.delete(keys, message=encode_keys(core.sender, keys))
        except CacheStoreError:
            for key in keys:
                core.remember("k", key)
            return removed

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry tagged ``tag`` (in this view's namespace) from both tiers and
        every instance's L1; how many entries Redis held (without Redis: this process's L1)."""
        core = self._core
        full = self._ns + tag
        core.invalidated()
        removed = len(core.l1.remove_tag(full)) if core.l1 is not None else 0
        if core.l2 is None:
            return removed
        try:
            return await core.l2.invalidate_tag(full, message=encode_tag(core.sender, full))
        except CacheStoreError:
            core.remember("t", full)
            return removed

    async def invalidate_prefix(self, prefix: str) -> int:
        """Remove every entry whose key starts with ``prefix`` (in this view's namespace) from
        both tiers and every instance's L1; how many entries Redis held (without Redis: this
        process's L1). ``""`` on a namespace empties the namespace."""
        core = self._core
        full = self._ns + prefix
        core.invalidated(prefix=full)
        removed = len(core.l1.remove_prefix(full)) if core.l1 is not None else 0
        if core.l2 is None:
            return removed
        try:
            return await core.l2.invalidate_prefix(full, message=encode_prefix(core.sender, full))
        except CacheStoreError:
            core.remember("p", full)
            return removed

    # -- warming -------------------------------------------------------------------------------

    async def warm(self, loaders: Mapping[str, Loader], *, ttl: float | None = None) -> None:
        """Load every key of ``loaders`` not already cached (a few at a time). A failing loader
        is logged and skipped: warming never stops a start-up."""
        gate = asyncio.Semaphore(_WARM_CONCURRENCY)

        async def one(key: str, loader: Loader) -> None:
            async with gate:
                try:
                    await self.get_or_set(key, loader, ttl=ttl)
                except Exception as exc:
                    _log.warning("cache: warming a key failed", key=key, error=repr(exc))

        await asyncio.gather(*(one(key, loader) for key, loader in loaders.items()))

    def warm_on_start(self, loaders: Mapping[str, Loader], *, ttl: float | None = None) -> None:
        """Register loaders that :meth:`start` runs through :meth:`warm`."""
        self._core.warmers.append((dict(loaders), ttl, self))


def _landed(core: _Core, full: str, flight: asyncio.Future[Any]) -> None:
    if core.flights.get(full) is flight:
        del core.flights[full]
    if not flight.cancelled():
        # Mark the exception retrieved: every waiter already got it, or none is left.
        flight.exception()

"""How the engine builds the tiered cache from :class:`Settings` and its :class:`Stores`.

``cache.store = "auto"`` shares the Redis connection of ``store.redis_url`` when one is set (L1
plus L2, invalidations over pub/sub), else the cache is L1 only, per process; start-up then warns
when several workers each keep their own L1, because invalidations cannot reach the others.
"""

from __future__ import annotations

from typing import Any

from bastion.cache.tiered import Cache
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.settings import Settings
from bastion.store.errors import StoreError
from bastion.store.stores import Stores

__all__ = ["build_cache", "purge"]

_log: Any = get_logger("bastion.cache")


def build_cache(settings: Settings, stores: Stores | None, metrics: Metrics) -> Cache:
    """The engine's cache: Redis from ``stores`` when configured (not owned: the stores close
    it), otherwise L1 only. A ``cache.store = "redis"`` without ``store.redis_url`` is refused."""
    config = settings.cache
    redis = stores.redis if stores is not None else None
    if config.store == "redis" and redis is None:
        raise ValueError("cache.store = 'redis' needs store.redis_url")
    client = redis.client if redis is not None and config.store != "memory" else None
    cache = Cache(config, redis=client, metrics=metrics, timeout=settings.store.timeout)
    if client is None and settings.server.workers > 1:
        _log.warning(
            "the cache is per worker without Redis: a write or invalidation in one worker does "
            "not reach the others' L1 until their entries expire; set store.redis_url to share",
            workers=settings.server.workers,
        )
    return cache


async def purge(
    settings: Settings,
    *,
    key: str | None = None,
    prefix: str | None = None,
    tag: str | None = None,
    namespace: str | None = None,
) -> int:
    """Invalidate from a separate, short-lived process (``bastion cache purge``): deletes from
    Redis and tells every running instance to evict from its L1. Exactly one of ``key``,
    ``prefix`` or ``tag``; ``namespace`` scopes it. How many entries Redis held; without
    ``store.redis_url`` nothing is shared, so there is nothing to purge (0).
    :class:`StoreError` when Redis does not answer."""
    if sum(value is not None for value in (key, prefix, tag)) != 1:
        raise ValueError("give exactly one of key, prefix or tag")
    if not settings.store.redis_url or settings.cache.store == "memory":
        return 0
    cache = Cache.from_url(settings.store.redis_url, settings.cache, timeout=settings.store.timeout)
    view = cache.namespace(namespace) if namespace else cache
    try:
        if key is not None:
            removed = await view.delete_many([key])
        elif prefix is not None:
            removed = await view.invalidate_prefix(prefix)
        else:
            assert tag is not None
            removed = await view.invalidate_tag(tag)
        if cache.degraded:
            raise StoreError("cache purge: redis did not answer")
        return removed
    finally:
        await cache.close()

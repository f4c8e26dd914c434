"""Configuration of the tiered cache (``[cache]``) and of the HTTP response cache
(``[cache.http]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bastion.cache.http.config import HttpCacheConfig
from bastion.config_types import ByteSize, ConfigModel, Duration

__all__ = ["CacheConfig"]


class CacheConfig(ConfigModel):
    """``[cache]``: the in-process L1 and the shared Redis L2 (``store.redis_url``)."""

    store: Literal["auto", "memory", "redis"] = "auto"
    """Where the shared tier (L2) lives: ``auto`` is Redis when ``store.redis_url`` is set, else
    none (L1 only, per process); ``memory`` never uses Redis; ``redis`` requires it."""
    l1_max_entries: int = Field(default=10_000, ge=0)
    """In-process tier (L1), per process: most entries kept (0 turns L1 off: every call goes to
    Redis). Admission is W-TinyLFU: a new key displaces a cached one only when it has been asked
    for more often recently, so a scan of one-off keys cannot flush the hot set."""
    l1_max_bytes: ByteSize = Field(default=64 * 1024 * 1024, ge=0)
    """L1, per process: most bytes of serialized values kept (0: bounded by entries only)."""
    default_ttl: Duration = Field(default=300.0, gt=0)
    """Freshness of an entry stored without a ``ttl``."""
    negative_ttl: Duration = 0.0
    """How long a loader's ``None`` is remembered when the call gives no ``negative_ttl``
    (0: ``None`` is not cached)."""
    compress_threshold: ByteSize = Field(default=1024, ge=0)
    """Serialized values larger than this are stored zstd-compressed in Redis."""
    compress_level: int = Field(default=3, ge=1, le=22)
    """zstd level of compressed values."""
    lock_ttl: Duration = Field(default=5.0, gt=0)
    """Cross-instance single flight: how long one instance's loader holds the Redis lock of a
    key while the others wait for its result; past it they load themselves."""
    early_refresh: float = Field(default=1.0, ge=0)
    """Probabilistic early refresh (XFetch ``beta``): a ``get_or_set`` hit shortly before expiry
    refreshes in the background with a probability growing as expiry nears, scaled by how long
    the loader took; 0 turns it off, above 1 refreshes earlier."""
    timeout: Duration = Field(default=0.25, gt=0)
    """Longest a cache call waits on Redis (``store.timeout`` when shorter); past it the call is
    answered by L1 alone."""
    retry_after: Duration = Field(default=1.0, gt=0)
    """After a Redis failure the cache stops asking Redis for this long (doubling on each further
    failure, up to 30 s) instead of paying a timeout per call."""
    key_prefix: str = "bastion:c:"
    """Prefix of every cache key, tag set and lock in Redis."""
    invalidation_channel: str = "bastion:cache:invalidate"
    """Redis pub/sub channel on which instances tell each other which L1 entries to evict."""
    http: HttpCacheConfig = Field(default_factory=HttpCacheConfig)
    """The HTTP response cache stage."""

    @field_validator("key_prefix", "invalidation_channel")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

"""Configuration of the tiered cache (``[cache]``) and the HTTP response cache (``[cache.http]``)."""

from __future__ import annotations

from pydantic import Field

from bastion.cache.http.config import HttpCacheConfig
from bastion.config_types import ConfigModel

__all__ = ["CacheConfig"]


class CacheConfig(ConfigModel):
    """``[cache]``: the in-process L1 and the shared Redis L2 (``store.redis_url``)."""

    http: HttpCacheConfig = Field(default_factory=HttpCacheConfig)
    """The HTTP response cache stage."""

"""Configuration of the HTTP response cache (``[cache.http]``)."""

from __future__ import annotations

from bastion.config_types import ConfigModel

__all__ = ["HttpCacheConfig"]


class HttpCacheConfig(ConfigModel):
    """``[cache.http]``: caches the terminal's cacheable responses as a shared cache (RFC 9111)."""

    enabled: bool = False
    """Cache every route's cacheable responses (per-route overrides below)."""

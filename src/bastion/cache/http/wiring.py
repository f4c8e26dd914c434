"""How the HTTP response cache plugs into the engine.

The ``cache`` stage is in the chain when ``[cache.http]`` is enabled or a route turns caching on
for some paths; its entries live in the ``http`` namespace of the engine's tiered cache, so they
are shared by every instance over Redis (``store.redis_url``) and invalidated everywhere at once.
"""

from __future__ import annotations

from bastion.cache.http.config import HttpCacheConfig
from bastion.cache.http.stage import HttpCacheStage
from bastion.cache.http.storage import ResponseStore
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp

__all__ = ["NAMESPACE", "http_cache_enabled", "http_cache_stage"]

NAMESPACE = "http"
"""Namespace of the response entries in the tiered cache (``bastion cache purge`` uses it)."""


def http_cache_enabled(config: HttpCacheConfig) -> bool:
    """Whether any path is cached: the section is on, or a route turns it on."""
    return config.enabled or any(route.enabled for route in config.routes)


def http_cache_stage(
    app: ASGIApp, deps: Deps, store: ResponseStore | None = None
) -> HttpCacheStage:
    """The ``cache`` stage in front of ``app``, storing in ``store`` (default: the ``http``
    namespace of the engine's tiered cache, ``deps.cache``)."""
    if store is None:
        if deps.cache is None:
            raise ValueError("the HTTP cache stage needs the engine's tiered cache (deps.cache)")
        store = deps.cache.namespace(NAMESPACE)
    return HttpCacheStage(app, config=deps.settings.cache.http, deps=deps, store=store)

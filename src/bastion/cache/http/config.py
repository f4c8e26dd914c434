"""Configuration of the HTTP response cache (``[cache.http]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bastion.config_types import ByteSize, ConfigModel, Duration
from bastion.http.paths import check_globs

__all__ = ["HttpCacheConfig", "HttpCacheRouteConfig", "KeyScope"]

KeyScope = Literal["shared", "user", "tenant"]

_DEFAULT_STATUSES = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]


class HttpCacheRouteConfig(ConfigModel):
    """``[[cache.http.routes]]``: caching of some paths; the first entry whose globs match the
    request path applies, unset keys keep the section's value."""

    paths: list[str]
    """Path globs (``/api/catalog/**``)."""
    enabled: bool | None = None
    """Cache these paths (``false``: never; ``true`` with the section off: only these).
    Paths with a ``;`` (path parameters, which many servers drop before routing) are cached
    only under a route that sets ``true`` itself."""
    ttl: Duration | None = None
    """Freshness lifetime replacing the one the response states (``max-age``, ``s-maxage``,
    ``Expires``). ``no-store``, ``no-cache``, ``private`` and ``Set-Cookie`` still apply."""
    default_ttl: Duration | None = None
    """Freshness lifetime of responses that state none (the section's ``default_ttl``)."""
    key: KeyScope | None = None
    """``shared``: one entry for everybody; ``user``: one per principal (its subject), which
    also allows ``private`` responses; ``tenant``: one per ``principal.extra["tenant"]``. On a
    ``user``/``tenant`` route a request with a principal is cached under it whatever
    ``Authorization``/``Cookie`` it carries; a request without one follows the shared rules."""

    @field_validator("paths")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        if not patterns:
            raise ValueError("a cache route needs at least one path glob")
        return check_globs(patterns)


class HttpCacheConfig(ConfigModel):
    """``[cache.http]``: caches the terminal's cacheable responses as a shared cache (RFC 9111).

    Entries live in the tiered cache (``[cache]``: in process, and in Redis when
    ``store.redis_url`` is set, shared by every instance)."""

    enabled: bool = False
    """Cache every route's cacheable responses (per-route overrides below)."""
    default_ttl: Duration = 0.0
    """Heuristic freshness lifetime (RFC 9111 §4.2.2) of responses that state none
    (no ``max-age``, ``s-maxage`` or ``Expires``), for the statuses cacheable by default only;
    0: such responses are stored only to be revalidated (when they carry a validator)."""
    revalidate_window: Duration = 300.0
    """How long a stale response carrying ``ETag`` or ``Last-Modified`` is kept so the next
    request revalidates it with a conditional request instead of fetching it whole."""
    coalesce_wait: Duration = Field(default=5.0, ge=0)
    """How long a request waits for a concurrent miss of the same URL (one request asks the
    terminal, the others are answered from what it stores) before asking the terminal itself;
    0: never waits."""
    max_object_size: ByteSize = Field(default=1024 * 1024, ge=0)
    """Largest body stored; bigger responses stream through untouched and are not buffered."""
    statuses: list[int] = Field(default_factory=lambda: list(_DEFAULT_STATUSES))
    """Statuses that may be stored (206 and 304 never are)."""
    x_cache_header: bool = False
    """Add ``X-Cache: HIT``, ``MISS`` or ``STALE`` to responses the cache considered."""
    honour_request_directives: bool = True
    """Follow the client's ``Cache-Control`` (``no-cache``, ``max-age``, ``max-stale``,
    ``min-fresh``, ``only-if-cached``); ``false``: clients cannot force a fetch from the
    upstream."""
    key_host: bool = True
    """Include the public host in the key (the host a trusted proxy forwarded, else ``Host``):
    sites served by name stay apart, and a client sending another ``Host`` fills only its own
    entry. Off only for an upstream that never builds a response from the host. The scheme is
    always in the key."""
    ignore_query_params: list[str] = Field(default_factory=list)
    """Query parameters left out of the key (``utm_source``, ``fbclid``); they still reach the
    upstream."""
    sort_query: bool = False
    """Key on the query parameters in sorted order (``?a=1&b=2`` and ``?b=2&a=1`` share an
    entry); only for upstreams that do not care about the order."""
    tag_headers: list[str] = Field(default_factory=lambda: ["cache-tag", "surrogate-key"])
    """Response headers naming tags (comma or space separated) for ``bastion cache purge
    --tag``; removed from the client's response."""
    routes: list[HttpCacheRouteConfig] = Field(default_factory=list)
    """Per-path overrides: opt-in or out, TTLs, per-user or per-tenant keys."""

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, statuses: list[int]) -> list[int]:
        for status in statuses:
            if not 200 <= status <= 599 or status in (206, 304):
                raise ValueError(f"status {status} cannot be stored (200-599, not 206 or 304)")
        return statuses

    @field_validator("tag_headers")
    @classmethod
    def _lower(cls, names: list[str]) -> list[str]:
        return [name.strip().lower() for name in names]

"""Which caching policy applies to a path: the section's, or the first ``[[cache.http.routes]]``
entry whose globs match.

An upstream may route other spellings of a path alike (case, a trailing slash, encoded
separators: :func:`bastion.http.paths.path_spellings`); they can only make the policy stricter —
caching off, or a key per tenant or per user — never looser.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.cache.http.config import HttpCacheConfig, HttpCacheRouteConfig, KeyScope
from bastion.http.asgi import Scope
from bastion.http.paths import GlobMatcher, compile_alternatives, glob_regex, path_spellings

__all__ = ["CachePolicy", "CacheRoutes"]

_STRICTNESS = {"shared": 0, "tenant": 1, "user": 2}


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The caching of one path."""

    enabled: bool
    ttl: float | None
    """Lifetime replacing the response's explicit one (a route's ``ttl``)."""
    default_ttl: float
    """Heuristic lifetime of responses without explicit freshness."""
    key: KeyScope


class CacheRoutes:
    """The section's policy and the routes' overrides, matched with one compiled alternation."""

    def __init__(self, config: HttpCacheConfig) -> None:
        self._section = CachePolicy(config.enabled, None, config.default_ttl, "shared")
        self._policies = [self._route_policy(route, config) for route in config.routes]
        self._matcher: GlobMatcher | None = None
        if config.routes:
            self._matcher = compile_alternatives(
                "|".join(f"(?:{glob_regex(p)})" for p in route.paths) for route in config.routes
            )

    @staticmethod
    def _route_policy(route: HttpCacheRouteConfig, config: HttpCacheConfig) -> CachePolicy:
        return CachePolicy(
            enabled=config.enabled if route.enabled is None else route.enabled,
            ttl=route.ttl,
            default_ttl=config.default_ttl if route.default_ttl is None else route.default_ttl,
            key=route.key or "shared",
        )

    def _match(self, path: str) -> CachePolicy:
        assert self._matcher is not None
        found = self._matcher.match(path)
        return self._section if found is None else self._policies[found.lastindex - 1]

    def policy(self, scope: Scope, path: str) -> CachePolicy:
        """The policy of the decoded ``path`` of the request ``scope``."""
        if self._matcher is None:
            return self._section
        policy = self._match(path)
        for spelling in path_spellings(scope, path):
            other = self._match(spelling)
            if not other.enabled:
                return other
            if _STRICTNESS[other.key] > _STRICTNESS[policy.key]:
                policy = CachePolicy(policy.enabled, policy.ttl, policy.default_ttl, other.key)
        return policy

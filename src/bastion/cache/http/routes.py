"""Which caching policy applies to a path: the section's, or the first ``[[cache.http.routes]]``
entry whose globs match.

An upstream may route other spellings of a path alike (repeated slashes, case, a trailing slash,
encoded separators: :func:`bastion.http.paths.path_spellings`, and path parameters: ``;…`` at the
end of a segment, which many servers drop before routing); they can only make the policy
stricter — caching off, or a key per tenant or per user — never looser. A path with a ``;`` is
cached only where a route matching it says ``enabled = true`` itself: what such a path names
depends on the upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bastion.cache.http.config import HttpCacheConfig, HttpCacheRouteConfig, KeyScope
from bastion.http.asgi import Scope
from bastion.http.paths import GlobMatcher, compile_alternatives, glob_regex, path_spellings

__all__ = ["CachePolicy", "CacheRoutes"]

_STRICTNESS = {"shared": 0, "tenant": 1, "user": 2}
_SLASHES = re.compile(r"/{2,}")
_PARAMETERS = re.compile(r";[^/]*")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The caching of one path."""

    enabled: bool
    ttl: float | None
    """Lifetime replacing the response's explicit one (a route's ``ttl``)."""
    default_ttl: float
    """Heuristic lifetime of responses without explicit freshness."""
    key: KeyScope
    explicit: bool = False
    """A route turned caching on itself (``enabled = true``)."""


class CacheRoutes:
    """The section's policy and the routes' overrides, matched with one compiled alternation."""

    def __init__(self, config: HttpCacheConfig) -> None:
        self._section = CachePolicy(config.enabled, None, config.default_ttl, "shared")
        self._off = CachePolicy(False, None, config.default_ttl, "shared")
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
            explicit=route.enabled is True,
        )

    def _match(self, path: str) -> CachePolicy:
        assert self._matcher is not None
        found = self._matcher.match(path)
        return self._section if found is None else self._policies[found.lastindex - 1]

    def policy(self, scope: Scope, path: str) -> CachePolicy:
        """The policy of the decoded ``path`` of the request ``scope``."""
        if "//" in path:
            path = _SLASHES.sub("/", path)
        parameters = ";" in path
        if self._matcher is None:
            return self._off if parameters else self._section
        policy = self._match(path)
        if parameters and not policy.explicit:
            return self._off
        spellings = path_spellings(scope, path)
        if parameters:
            spellings.append(_SLASHES.sub("/", _PARAMETERS.sub("", path)) or "/")
        for spelling in spellings:
            other = self._match(spelling)
            if not other.enabled:
                return other
            if _STRICTNESS[other.key] > _STRICTNESS[policy.key]:
                policy = CachePolicy(
                    policy.enabled, policy.ttl, policy.default_ttl, other.key, policy.explicit
                )
        return policy

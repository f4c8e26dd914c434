"""Route matching by path prefix and optional host, shared by every stage that needs the route."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bastion.proxy.config import RouteConfig

__all__ = ["Route", "RouteTable", "request_host"]


@dataclass(frozen=True, slots=True)
class Route:
    """A configured route as the stages see it."""

    name: str
    prefix: str
    host: str | None
    config: RouteConfig = field(repr=False, compare=False)

    def matches_path(self, path: str) -> bool:
        prefix = self.prefix
        if prefix == "/":
            return True
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")

    def matches_host(self, host: str | None) -> bool:
        pattern = self.host
        if pattern is None:
            return True
        if host is None:
            return False
        if pattern.startswith("*."):
            suffix = pattern[1:]
            return host.endswith(suffix) and "." not in host[: -len(suffix)]
        return host == pattern


class RouteTable:
    """Routes ordered so that the first match is the most specific one: a host-bound route
    before a host-less one, then the longest prefix."""

    __slots__ = ("_routes", "_single")

    def __init__(self, configs: Sequence[RouteConfig]) -> None:
        routes = [Route(c.name, c.prefix, c.host, c) for c in configs]
        routes.sort(key=lambda r: (r.host is None, -len(r.prefix)))
        self._routes = tuple(routes)
        only = self._routes[0] if len(self._routes) == 1 else None
        self._single = (
            only if only is not None and only.prefix == "/" and only.host is None else None
        )

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def match(self, path: str, host: str | None) -> Route | None:
        """The most specific route for ``path`` on ``host`` (host without port, lower case)."""
        if self._single is not None:
            return self._single
        for route in self._routes:
            if route.matches_path(path) and route.matches_host(host):
                return route
        return None


def request_host(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The ``Host`` header without its port, lower-cased; ``None`` when absent."""
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").lower()
            if host.startswith("["):
                end = host.find("]")
                return host[: end + 1] if end != -1 else host
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None

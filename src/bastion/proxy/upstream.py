"""Per-route upstream targets: everything about a route that can be computed once.

The upstream request target is the route's base path, then the client's path exactly as it was
sent (``raw_path``; percent-encoding is never undone or redone) with the route prefix removed
when ``strip_prefix`` is set, then the query string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from bastion.http.asgi import Scope
from bastion.http.client_ip import ClientIpResolver
from bastion.proxy.headers import RequestHeaderRewriter
from bastion.proxy.pool import ConnectionPool, UpstreamClient

if TYPE_CHECKING:
    from bastion.http.routes import Route

__all__ = ["UpstreamTarget", "strip_raw_prefix", "upstream_path"]

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_HEX = frozenset(b"0123456789abcdefABCDEF")


def strip_raw_prefix(raw_path: bytes, prefix: bytes) -> bytes:
    """``raw_path`` without the leading ``prefix`` (compared after percent-decoding, as routes
    are matched on the decoded path). The remainder keeps its original encoding."""
    if raw_path.startswith(prefix):
        rest = raw_path[len(prefix) :]
        if not rest or rest[:1] == b"/":
            return rest
    index = 0
    size = len(raw_path)
    for expected in prefix:
        if index >= size:
            return raw_path
        byte = raw_path[index]
        if byte == 0x25 and _is_escape(raw_path, index):
            byte = int(raw_path[index + 1 : index + 3], 16)
            index += 3
        else:
            index += 1
        if byte != expected:
            return raw_path
    rest = raw_path[index:]
    if rest and rest[:1] != b"/":
        return raw_path
    return rest


def _is_escape(data: bytes, index: int) -> bool:
    return index + 2 < len(data) and data[index + 1] in _HEX and data[index + 2] in _HEX


def upstream_path(base: bytes, raw_path: bytes, query: bytes) -> bytes:
    """The request target sent upstream: ``base`` + ``raw_path`` (+ ``?query``)."""
    path = base + raw_path if raw_path else base
    if not path:
        path = b"/"
    elif path[:1] != b"/":
        path = b"/" + path
    if query:
        return path + b"?" + query
    return path


class UpstreamTarget:
    """A route's upstream, prepared: pool, base path, ``Host``, timeouts, header rewriters."""

    __slots__ = (
        "_base",
        "_prefix",
        "connect_timeout",
        "http_headers",
        "name",
        "pool",
        "read_timeout",
        "route",
        "websocket_base",
        "websocket_headers",
    )

    def __init__(
        self,
        route: Route,
        *,
        client: UpstreamClient,
        connect_timeout: float,
        read_timeout: float,
        request_id_header: str,
        resolver: ClientIpResolver | None,
        trace_context: bool = False,
    ) -> None:
        """``trace_context``: tracing is on; the upstream requests' trace context is the
        proxy's."""
        config = route.config
        if not config.upstream:
            raise ValueError(f"route {route.name!r} has no upstream URL")
        parts = urlsplit(config.upstream)
        scheme = parts.scheme
        host = parts.hostname or ""
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        self.route = route
        self.name = route.name
        self.pool: ConnectionPool = client.pool(scheme, host, port)
        self.connect_timeout = (
            config.connect_timeout if config.connect_timeout is not None else connect_timeout
        )
        self.read_timeout = config.read_timeout if config.read_timeout is not None else read_timeout
        self._base = parts.path.rstrip("/").encode("latin-1")
        self._prefix = (
            route.prefix.encode("utf-8") if config.strip_prefix and route.prefix != "/" else b""
        )
        host_text = f"[{host}]" if ":" in host else host
        host_header = host_text if port == default_port else f"{host_text}:{port}"
        self.http_headers = RequestHeaderRewriter(
            upstream_host=host_header.encode("latin-1"),
            preserve_host=config.preserve_host,
            request_id_header=request_id_header,
            resolver=resolver,
            trace_context=trace_context,
        )
        self.websocket_headers = RequestHeaderRewriter(
            upstream_host=host_header.encode("latin-1"),
            preserve_host=config.preserve_host,
            request_id_header=request_id_header,
            resolver=resolver,
            websocket=True,
            trace_context=trace_context,
        )
        ws_scheme = "wss" if scheme == "https" else "ws"
        self.websocket_base = f"{ws_scheme}://{host_header}"

    def target(self, scope: Scope) -> bytes:
        """The request target (path and query) for the upstream."""
        raw = scope.get("raw_path")
        if raw is None:
            raw = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        if self._prefix:
            raw = strip_raw_prefix(raw, self._prefix)
        return upstream_path(self._base, raw, scope.get("query_string", b""))

    def websocket_url(self, scope: Scope) -> str:
        """The upstream WebSocket URL, already encoded."""
        return self.websocket_base + self.target(scope).decode("latin-1")

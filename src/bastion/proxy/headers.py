"""Header rules of the gateway: what crosses the proxy in each direction and what it adds.

Towards the upstream, hop-by-hop headers (RFC 9110 §7.6.1, plus every name listed in
``Connection``) and client-sent ``X-Bastion-*`` headers are removed, and the proxy states what it
knows: ``X-Forwarded-For``/``-Proto``/``-Host``, RFC 7239 ``Forwarded``, ``X-Real-IP``, the
request id, ``Host`` and the verified identity. A client's forwarding headers are only extended
when the peer is a trusted proxy; otherwise they are replaced, so a client can never smuggle an
address into the upstream's view. Towards the client, hop-by-hop headers are removed, and the
upstream's ``Date`` (the gateway's server stamps its own).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from bastion.http.asgi import Scope
from bastion.http.client_ip import ClientIpResolver
from bastion.http.principal import Principal
from bastion.http.state import RequestState

__all__ = [
    "HOP_BY_HOP",
    "IDENTITY_PREFIX",
    "RESPONSE_NOT_RELAYED",
    "RequestHeaderRewriter",
    "RewrittenHeaders",
    "connection_tokens",
    "forwarded_element",
    "forwarded_node",
    "has_body",
    "identity_headers",
    "strip_response_headers",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Headers that describe one connection, never the message (RFC 9110 §7.6.1)."""

RESPONSE_NOT_RELAYED = HOP_BY_HOP | {b"date"}
"""Upstream response headers the gateway drops: hop-by-hop ones, and ``Date``, which the
gateway's server stamps on every response itself (a second one would make it ambiguous)."""

IDENTITY_PREFIX = b"x-bastion-"
"""Prefix of the identity headers only Bastion may set; client-sent ones are always dropped."""


def _is_identity(name: bytes) -> bool:
    """Whether ``name`` (lower case) is an identity header, in any spelling an upstream might
    fold into one: CGI-style servers (WSGI, Rack, PHP) map ``X-Bastion-User`` and
    ``X_Bastion_User`` alike to ``HTTP_X_BASTION_USER``."""
    prefix = name[:10]
    if prefix == IDENTITY_PREFIX:
        return True
    return prefix[:1] == b"x" and prefix.replace(b"_", b"-") == IDENTITY_PREFIX


# Replaced by the proxy's own statement of the facts.
_REPLACED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
        # The gateway answers ``Expect: 100-continue`` itself (the server sends the interim
        # response when the body is first read), as nginx and Envoy do by default.
        b"expect",
        # Framing is decided again for the upstream hop.
        b"content-length",
    }
)
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
_TRACE_CONTEXT = frozenset({b"traceparent", b"tracestate"})
"""W3C trace context: replaced by the gateway's own when tracing is on."""
_CACHE_LIMIT = 4096
"""Clients whose forwarding headers are kept ready (the cache is emptied when full)."""
_CONNECTION_OPTIONS_IGNORED = frozenset({b"close", b"keep-alive", b"upgrade", b""})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a ``Connection`` value (lower case), minus the connection options
    that name no header."""
    return frozenset(t.strip().lower() for t in value.split(b",")) - _CONNECTION_OPTIONS_IGNORED


def forwarded_node(ip: str) -> str:
    """An address as an RFC 7239 node: IPv6 in brackets and quoted, ``unknown`` kept as is."""
    if ":" in ip:
        return f'"[{ip}]"'
    return ip


def _forwarded_value(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def forwarded_element(ip: str, proto: str, host: str | None) -> str:
    """One RFC 7239 ``Forwarded`` element: ``for=…;proto=…[;host=…]``."""
    element = f"for={forwarded_node(ip)};proto={proto}"
    if host:
        element += f";host={_forwarded_value(host)}"
    return element


def _safe_value(text: str) -> bytes | None:
    data = text.encode("utf-8")
    if any(b < 0x20 or b == 0x7F for b in data):
        return None
    return data


def identity_headers(principal: Principal) -> list[tuple[bytes, bytes]]:
    """The ``X-Bastion-*`` headers describing a verified principal: user (subject), roles
    (comma-separated), scopes (space-separated, as in OAuth) and session. A value that would
    need control characters is left out rather than altered."""
    values = [
        (b"x-bastion-user", principal.subject),
        (b"x-bastion-roles", ",".join(principal.roles)),
        (b"x-bastion-scopes", " ".join(principal.scopes)),
    ]
    if principal.session_id:
        values.append((b"x-bastion-session", principal.session_id))
    headers = []
    for name, text in values:
        data = _safe_value(text)
        if data is not None:
            headers.append((name, data))
    return headers


class RewrittenHeaders:
    """The request headers for the upstream plus what the client's framing said."""

    __slots__ = ("content_length", "headers", "transfer_encoding")

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        content_length: bytes | None,
        transfer_encoding: bool,
    ) -> None:
        self.headers = headers
        self.content_length = content_length
        """The client's ``Content-Length`` (not included in ``headers``)."""
        self.transfer_encoding = transfer_encoding
        """Whether the client sent a ``Transfer-Encoding`` (its body is streamed)."""


def has_body(content_length: bytes | None, transfer_encoding: bool) -> bool:
    """Whether a request's framing announces a body at all."""
    return transfer_encoding or (content_length is not None and content_length != b"0")


_Forwarding = tuple[tuple[tuple[bytes, bytes], ...], bytes]
"""Forwarding headers as pairs and as ready ``name: value`` lines joined by CRLF."""


class RequestHeaderRewriter:
    """Rewrites a client's request headers for one route's upstream.

    Precomputes the names to drop and the upstream ``Host``; per request it walks the header
    list once and appends the forwarding headers (cached per client when no chain is extended).
    :meth:`http_head` renders straight into request-head lines; :meth:`rewrite` gives pairs.
    """

    __slots__ = (
        "_cache",
        "_drop",
        "_preserve_host",
        "_request_id",
        "_request_id_line",
        "_resolver",
        "_upstream_host",
    )

    def __init__(
        self,
        *,
        upstream_host: bytes,
        preserve_host: bool,
        request_id_header: str,
        resolver: ClientIpResolver | None,
        websocket: bool = False,
        trace_context: bool = False,
    ) -> None:
        """``trace_context``: tracing is on, so the client's ``traceparent``/``tracestate`` are
        dropped (the proxy sends its own client span's context instead)."""
        self._upstream_host = upstream_host
        self._preserve_host = preserve_host
        self._request_id = request_id_header.lower().encode("latin-1")
        self._request_id_line = self._request_id + b": "
        self._resolver = resolver if resolver is not None and resolver.enabled else None
        drop = set(HOP_BY_HOP | _REPLACED)
        drop.add(b"host")
        drop.add(self._request_id)
        if websocket:
            drop |= _WEBSOCKET_HANDSHAKE
        if trace_context:
            drop |= _TRACE_CONTEXT
        self._drop = frozenset(drop)
        self._cache: dict[tuple[str, str, str | None, bytes | None, str | None], _Forwarding] = {}

    def rewrite(self, scope: Scope, state: RequestState) -> RewrittenHeaders:
        """The upstream request headers of ``scope`` as pairs (without framing headers)."""
        kept, content_length, transfer_encoding, forwarding = self._scan(scope, state)
        kept.extend(forwarding[0])
        kept.append((self._request_id, state.request_id.encode("latin-1")))
        principal = state.principal
        if isinstance(principal, Principal):
            kept.extend(identity_headers(principal))
        return RewrittenHeaders(kept, content_length, transfer_encoding)

    def http_head(
        self, scope: Scope, state: RequestState, request_line: bytes
    ) -> tuple[list[bytes], bytes | None, bool]:
        """Request-head lines for the upstream (``request_line`` first, then ``name: value``
        lines without CRLF and without framing headers), the client's ``Content-Length`` and
        whether it sent a ``Transfer-Encoding``."""
        kept, content_length, transfer_encoding, forwarding = self._scan(scope, state)
        lines = [request_line]
        lines.extend([name + b": " + value for name, value in kept])
        lines.append(forwarding[1])
        lines.append(self._request_id_line + state.request_id.encode("latin-1"))
        principal = state.principal
        if isinstance(principal, Principal):
            lines.extend([name + b": " + value for name, value in identity_headers(principal)])
        return lines, content_length, transfer_encoding

    def _scan(
        self, scope: Scope, state: RequestState
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool, _Forwarding]:
        drop = self._drop
        kept: list[tuple[bytes, bytes]] = []
        append = kept.append
        special: list[tuple[bytes, bytes]] = []
        for pair in scope["headers"]:
            name = pair[0]
            if name in drop:
                special.append(pair)
            elif not _is_identity(name):
                append(pair)

        host = None
        content_length = None
        transfer_encoding = False
        xff: list[bytes] = []
        forwarded: list[bytes] = []
        listed: frozenset[bytes] = frozenset()
        for name, value in special:
            if name == b"host":
                host = value
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                transfer_encoding = True
            elif name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"forwarded":
                forwarded.append(value)
            elif name == b"connection" and value.lower() not in _CONNECTION_OPTIONS_IGNORED:
                listed = listed | connection_tokens(value)
        if listed:
            kept = [pair for pair in kept if pair[0] not in listed]

        client_ip = state.client_ip
        scheme = state.scheme
        if self._resolver is not None and self._peer(scope)[1]:
            forwarding = self._forwarding(
                scope, client_ip, scheme, host, state.forwarded_host, xff, forwarded
            )
        else:
            # From an untrusted peer no chain is extended: the forwarding headers depend only
            # on these values, which repeat across a client's requests. Compute them once.
            key = (client_ip, scheme, scope.get("scheme"), host, state.forwarded_host)
            cached = self._cache.get(key)
            if cached is None:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                cached = self._cache[key] = self._forwarding(
                    scope, client_ip, scheme, host, state.forwarded_host, xff, forwarded
                )
            forwarding = cached
        return kept, content_length, transfer_encoding, forwarding

    def _forwarding(
        self,
        scope: Scope,
        client_ip: str,
        scheme: str,
        host: bytes | None,
        forwarded_host: str | None,
        xff: Sequence[bytes],
        forwarded: Sequence[bytes],
    ) -> _Forwarding:
        """``Host`` and the forwarding headers (``X-Forwarded-*``, ``Forwarded``,
        ``X-Real-IP``) for a request from ``client_ip``."""
        if scheme == "ws":
            scheme = "http"
        elif scheme == "wss":
            scheme = "https"
        host_text = host.decode("latin-1") if host is not None else None
        public_host = forwarded_host or host_text
        xff_value, forwarded_value = self._chain(
            scope, client_ip, scheme, host_text, xff, forwarded
        )
        headers = [
            (b"host", host if self._preserve_host and host else self._upstream_host),
            (b"x-forwarded-for", xff_value),
            (b"x-forwarded-proto", scheme.encode("latin-1")),
        ]
        if public_host:
            headers.append((b"x-forwarded-host", public_host.encode("latin-1")))
        headers.append((b"forwarded", forwarded_value))
        headers.append((b"x-real-ip", client_ip.encode("latin-1")))
        return tuple(headers), b"\r\n".join([name + b": " + value for name, value in headers])

    def _chain(
        self,
        scope: Scope,
        client_ip: str,
        client_scheme: str,
        host: str | None,
        xff: Sequence[bytes],
        forwarded: Sequence[bytes],
    ) -> tuple[bytes, bytes]:
        """``X-Forwarded-For`` and ``Forwarded`` values.

        From an untrusted peer the resolved client (the peer itself) replaces whatever the
        client claimed. From a trusted proxy the chain it sent in the header Bastion believes
        (``client_ip.header``) is kept and the proxy's own hop (the peer) appended, so the
        upstream sees the same chain Bastion believed; the other header is rebuilt from the
        resolved client, since the proxy passed it through as the client wrote it.
        """
        scheme = scope.get("scheme", "http")
        if scheme == "ws":
            scheme = "http"
        elif scheme == "wss":
            scheme = "https"
        peer_ip, trusted = self._peer(scope)
        if not trusted:
            return (
                client_ip.encode("latin-1"),
                forwarded_element(client_ip, scheme, host).encode("latin-1"),
            )
        own = forwarded_element(peer_ip, scheme, host)
        believed = self._resolver.header if self._resolver is not None else b""
        if xff and believed == b"x-forwarded-for":
            xff_value = b", ".join(xff) + b", " + peer_ip.encode("latin-1")
        elif client_ip != peer_ip:
            xff_value = f"{client_ip}, {peer_ip}".encode("latin-1")
        else:
            xff_value = peer_ip.encode("latin-1")
        if forwarded and believed == b"forwarded":
            forwarded_value = b", ".join(forwarded) + b", " + own.encode("latin-1")
        elif client_ip != peer_ip:
            first = forwarded_element(client_ip, client_scheme, None)
            forwarded_value = f"{first}, {own}".encode("latin-1")
        else:
            forwarded_value = own.encode("latin-1")
        return xff_value, forwarded_value

    def _peer(self, scope: Scope) -> tuple[str, bool]:
        if self._resolver is None:
            return "", False
        client = scope.get("client")
        return self._resolver.peer(client[0] if client else None)


def strip_response_headers(
    headers: Iterable[tuple[bytes, bytes]], listed: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """Remove hop-by-hop headers (and those listed in ``Connection``) and ``Date`` from a
    response."""
    return [
        pair for pair in headers if pair[0] not in RESPONSE_NOT_RELAYED and pair[0] not in listed
    ]

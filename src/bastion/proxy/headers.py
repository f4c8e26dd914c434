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

    @property
    def has_body(self) -> bool:
        """Whether the client's framing announces a body at all."""
        return self.transfer_encoding or (
            self.content_length is not None and self.content_length != b"0"
        )


class RequestHeaderRewriter:
    """Rewrites a client's request headers for one route's upstream.

    Precomputes the names to drop and the upstream ``Host``; per request it walks the header
    list once and appends the forwarding headers.
    """

    __slots__ = ("_drop", "_preserve_host", "_request_id", "_resolver", "_upstream_host")

    def __init__(
        self,
        *,
        upstream_host: bytes,
        preserve_host: bool,
        request_id_header: str,
        resolver: ClientIpResolver | None,
        websocket: bool = False,
    ) -> None:
        self._upstream_host = upstream_host
        self._preserve_host = preserve_host
        self._request_id = request_id_header.lower().encode("latin-1")
        self._resolver = resolver if resolver is not None and resolver.enabled else None
        drop = set(HOP_BY_HOP | _REPLACED)
        drop.add(b"host")
        drop.add(self._request_id)
        if websocket:
            drop |= _WEBSOCKET_HANDSHAKE
        self._drop = frozenset(drop)

    def rewrite(self, scope: Scope, state: RequestState) -> RewrittenHeaders:
        """The upstream request headers of ``scope`` (without framing headers)."""
        drop = self._drop
        kept: list[tuple[bytes, bytes]] = []
        append = kept.append
        special: list[tuple[bytes, bytes]] = []
        for pair in scope["headers"]:
            name = pair[0]
            if name in drop:
                special.append(pair)
            elif name[:10] != IDENTITY_PREFIX:
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
            elif name == b"connection":
                listed = listed | connection_tokens(value)
        if listed:
            kept = [pair for pair in kept if pair[0] not in listed]
            append = kept.append

        client_ip = state.client_ip
        scheme = state.scheme
        if scheme == "ws":
            scheme = "http"
        elif scheme == "wss":
            scheme = "https"
        host_text = host.decode("latin-1") if host is not None else None
        public_host = state.forwarded_host or host_text

        append((b"host", host if self._preserve_host and host else self._upstream_host))
        xff_value, forwarded_value = self._chain(
            scope, client_ip, scheme, host_text, xff, forwarded
        )
        append((b"x-forwarded-for", xff_value))
        append((b"x-forwarded-proto", scheme.encode("latin-1")))
        if public_host:
            append((b"x-forwarded-host", public_host.encode("latin-1")))
        append((b"forwarded", forwarded_value))
        append((b"x-real-ip", client_ip.encode("latin-1")))
        append((self._request_id, state.request_id.encode("latin-1")))
        principal = state.principal
        if isinstance(principal, Principal):
            kept.extend(identity_headers(principal))
        return RewrittenHeaders(kept, content_length, transfer_encoding)

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
        client claimed. From a trusted proxy the chain it sent is kept and the proxy's own hop
        (the peer) appended, so the upstream sees the same chain Bastion believed.
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
        if xff:
            xff_value = b", ".join(xff) + b", " + peer_ip.encode("latin-1")
        elif client_ip != peer_ip:
            xff_value = f"{client_ip}, {peer_ip}".encode("latin-1")
        else:
            xff_value = peer_ip.encode("latin-1")
        if forwarded:
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

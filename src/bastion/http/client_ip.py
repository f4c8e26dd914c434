"""Client address resolution: the one trust rule for forwarding headers.

The peer is the client unless the peer is a configured trusted proxy. Then the forwarding chain
(RFC 7239 ``Forwarded`` or ``X-Forwarded-For``) is walked right to left, skipping trusted hops,
and the first untrusted address is the client. A malformed or obfuscated hop ends the walk: the
last address that was vouched for stands, so garbage can never move the client somewhere new.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ClientAddress", "ClientIpResolver", "normalize_ip", "parse_forwarded"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_UNKNOWN = "unknown"
_CACHE_LIMIT = 4096


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if not text:
        return None
    if "%" in text:  # IPv6 zone index: meaningless beyond the link
        text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_ip(text: str) -> str | None:
    """Canonical text of an address (IPv6 compressed, IPv4-mapped as IPv4); ``None`` if invalid."""
    address = _parse_ip(text)
    return None if address is None else str(address)


def _valid_port(port: str) -> bool:
    """RFC 7239 node-port: digits, or an obfuscated ``_token``."""
    if port.isdigit():
        return len(port) <= 5
    return len(port) > 1 and port[0] == "_" and all(c.isalnum() or c in "._-" for c in port[1:])


def _node_address(node: str) -> IPAddress | None:
    """The address of an RFC 7239 node or an X-Forwarded-For entry (ports allowed)."""
    node = node.strip()
    if node.startswith('"') and node.endswith('"') and len(node) >= 2:
        node = node[1:-1].replace('\\"', '"')
    if node.startswith("["):
        end = node.find("]")
        if end == -1:
            return None
        rest = node[end + 1 :]
        if rest and not (rest[0] == ":" and _valid_port(rest[1:])):
            return None
        return _parse_ip(node[1:end])
    if node.count(":") == 1:  # IPv4 with port
        node, port = node.split(":", 1)
        if not _valid_port(port):
            return None
    return _parse_ip(node)


def _split_quoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double-quoted strings (RFC 7230 quoted-string)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """Parse an RFC 7239 ``Forwarded`` value into its elements, each a dict of lower-case
    parameter names to raw (still quoted) values. Invalid pairs are kept as an empty element so
    the caller stops at them."""
    elements: list[dict[str, str]] = []
    for element in _split_quoted(value, ","):
        params: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            if not pair.strip():
                continue
            name, sep, raw = pair.partition("=")
            if not sep:
                params = {}
                break
            params[name.strip().lower()] = raw.strip()
        elements.append(params)
    return elements


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return value[1:-1].replace('\\"', '"')
    return value


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The resolved client: address, scheme and host as the client used them."""

    ip: str
    scheme: str
    host: str | None = None


class ClientIpResolver:
    """Resolves the client address from the peer and, for trusted peers only, forwarding headers."""

    __slots__ = ("_header", "_networks", "_peer_cache")

    def __init__(self, trusted: Iterable[IPNetwork], header: str = "x-forwarded-for") -> None:
        self._networks = tuple(trusted)
        self._header = header.lower().encode("latin-1")
        if self._header not in (b"x-forwarded-for", b"forwarded"):
            raise ValueError(f"unsupported forwarding header {header!r}")
        self._peer_cache: dict[str, tuple[str, bool]] = {}

    @property
    def header(self) -> bytes:
        """The forwarding header believed from trusted peers."""
        return self._header

    @property
    def enabled(self) -> bool:
        """Whether any peer is trusted at all (else the peer is always the client)."""
        return bool(self._networks)

    def _trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self._networks)

    def peer(self, host: str | None) -> tuple[str, bool]:
        """Normalised peer address and whether it is a trusted proxy (cached per peer)."""
        if host is None:
            return _UNKNOWN, False
        cached = self._peer_cache.get(host)
        if cached is not None:
            return cached
        address = _parse_ip(host)
        result = (host, False) if address is None else (str(address), self._trusted(address))
        if len(self._peer_cache) >= _CACHE_LIMIT:
            self._peer_cache.clear()
        self._peer_cache[host] = result
        return result

    def resolve(
        self, peer_host: str | None, scheme: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> ClientAddress:
        """The client address for a request from ``peer_host`` with ``headers``."""
        peer, trusted = self.peer(peer_host)
        if not trusted:
            return ClientAddress(peer, scheme)
        name = self._header
        values = [v.decode("latin-1") for k, v in headers if k == name]
        if not values:
            return ClientAddress(peer, scheme)
        joined = ",".join(values)
        if name == b"forwarded":
            return self._walk_forwarded(peer, scheme, joined)
        return self._walk_xff(peer, scheme, joined, headers)

    def _walk_xff(
        self, peer: str, scheme: str, value: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> ClientAddress:
        hops = [entry for entry in value.split(",")]
        client = peer
        depth = 0
        for entry in reversed(hops):
            address = _node_address(entry)
            if address is None:
                break
            client = str(address)
            depth += 1
            if not self._trusted(address):
                break
        protos = [
            p.strip().lower()
            for k, v in headers
            if k == b"x-forwarded-proto"
            for p in v.decode("latin-1").split(",")
        ]
        if protos and depth:
            index = len(protos) - depth if len(protos) == len(hops) else len(protos) - 1
            candidate = protos[max(index, 0)]
            if candidate in ("http", "https"):
                scheme = candidate
        host = next((v.decode("latin-1") for k, v in headers if k == b"x-forwarded-host"), None)
        return ClientAddress(client, scheme, host.split(",")[-1].strip() if host else None)

    def _walk_forwarded(self, peer: str, scheme: str, value: str) -> ClientAddress:
        client = peer
        chosen: dict[str, str] | None = None
        for element in reversed(parse_forwarded(value)):
            node = element.get("for")
            address = _node_address(node) if node is not None else None
            if address is None:
                break
            client = str(address)
            chosen = element
            if not self._trusted(address):
                break
        host = None
        if chosen is not None:
            proto = _unquote(chosen.get("proto", "")).lower()
            if proto in ("http", "https"):
                scheme = proto
            if "host" in chosen:
                host = _unquote(chosen["host"])
        return ClientAddress(client, scheme, host)

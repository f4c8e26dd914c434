"""Cache keys of HTTP responses, and the tags that find them again.

A primary key is ``<path>?<query>|<scheme>://<host>|<scope>`` (the path as the client spelt it,
percent escapes and all, since that is what the terminal receives; the scheme the client used;
the public host: a trusted proxy's forwarded host, else ``Host``), each part escaped by
:func:`key_text` (so no request can spell another's key); it starts with the path so that
``bastion cache purge --prefix /api/`` reaches every entry below a path (whatever its query,
host, user or variant). ``<scope>`` is empty for shared entries, ``u:<subject>`` or
``t:<tenant>`` on per-user and per-tenant routes. A response with ``Vary`` is stored under
``<primary>|v:<digest of the request's values of the varied fields>``, and the primary key holds
the list of varied fields.

Every entry carries the tag ``p:<path>`` (the decoded path, repeated slashes merged: invalidation
by URL and by unsafe methods) and
``t:<tag>`` for each tag the upstream named in its tag headers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from bastion.http.asgi import Scope
from bastion.http.state import state_of
from bastion.proxy.headers import identity_headers

__all__ = [
    "KeyBuilder",
    "key_text",
    "path_tag",
    "public_host",
    "upstream_tag",
    "variant_key",
    "vary_source",
]


_QUERY_MEMO = 1024
_KEY_MEMO = 4096
"""Distinct requests whose primary key is remembered (hot paths cost one dict look-up)."""


def key_text(part: str) -> str:
    """``part`` with the key's separators (``?``, ``|``) and ``%`` percent-encoded, so no path,
    query, host or subject can spell another request's key."""
    if "%" in part:
        part = part.replace("%", "%25")
    if "|" in part:
        part = part.replace("|", "%7C")
    if "?" in part:
        part = part.replace("?", "%3F")
    return part


_REPEATED_SLASHES = re.compile(r"/{2,}")


def path_tag(path: str) -> str:
    """Tag of every entry stored for ``path`` (any query, host, user or variant); repeated
    slashes are merged, so every spelling of a path (a purge's too) names one tag."""
    return "p:" + (_REPEATED_SLASHES.sub("/", path) if "//" in path else path)


def upstream_tag(tag: str) -> str:
    """Tag of the entries whose response named ``tag`` in a tag header."""
    return "t:" + tag


def vary_source(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request fields a ``Vary`` is evaluated against: the client's, except the
    ``X-Bastion-*`` identity (from the verified principal, never the client's), plus the
    forwarding fields the gateway states itself (the resolved client address, scheme and public
    host) after the client's own. So ``Vary: X-Bastion-User`` keeps one variant per user, and
    neither a client's own forwarding fields (which a wrapped application reads as sent) nor
    the gateway's (which a proxied upstream reads instead) can select another client's
    variant."""
    state = state_of(scope)
    kept = [
        (name, value)
        for name, value in scope["headers"]
        if not name.replace(b"_", b"-").startswith(b"x-bastion-")
    ]
    if state.principal is not None:
        kept.extend(identity_headers(state.principal))
    client = state.client_ip.encode("latin-1")
    kept.append((b"x-forwarded-for", client))
    kept.append((b"forwarded", client))
    kept.append((b"x-real-ip", client))
    kept.append((b"x-forwarded-proto", state.scheme.encode("latin-1")))
    host = public_host(scope)
    if host is not None:
        kept.append((b"x-forwarded-host", host))
    return kept


def public_host(scope: Scope) -> bytes | None:
    """The host the client asked for: a trusted proxy's forwarded host, else ``Host``."""
    forwarded = state_of(scope).forwarded_host
    if forwarded:
        return forwarded.encode("latin-1")
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return next((value for name, value in headers if name == b"host"), None)


def variant_key(primary: str, values: Sequence[bytes]) -> str:
    """Key of the variant of ``primary`` selected by the request's ``values`` of the varied
    fields (in the order the response listed them)."""
    digest = hashlib.blake2b(b"\x00".join(values), digest_size=16).hexdigest()
    return f"{primary}|v:{digest}"


class KeyBuilder:
    """Primary keys under the section's key options (host, ignored and sorted parameters)."""

    def __init__(
        self, *, include_host: bool, ignore_params: Sequence[str], sort_query: bool
    ) -> None:
        self._host = include_host
        self._ignored = frozenset(ignore_params)
        self._sort = sort_query
        self._rewrite = bool(self._ignored) or sort_query
        self._queries: dict[bytes, str] = {}
        self._primaries: dict[tuple[str, bytes, str, bytes | None, str], str] = {}

    def query(self, raw: bytes) -> str:
        """The query string as it goes into the key.

        Ignored parameters are left out and the rest sorted by name (same names keep their
        order: an upstream may read the first or the last) on the raw text split at ``&``
        only, nothing decoded or re-encoded, so the key keeps every byte the upstream may read.
        A query with a ``;`` is keyed unchanged: some upstreams also split at ``;``, so what
        looks like one ignored parameter may carry another the upstream reads."""
        if not raw:
            return ""
        known = self._queries.get(raw)
        if known is not None:
            return known
        text = raw.decode("latin-1")
        if self._rewrite and ";" not in text:
            pairs = [
                (pair.partition("=")[0], pair)
                for pair in text.split("&")
                if pair and pair.partition("=")[0] not in self._ignored
            ]
            if self._sort:
                pairs.sort(key=lambda named: named[0])
            text = "&".join(pair for _, pair in pairs)
        text = key_text(text)
        if len(self._queries) >= _QUERY_MEMO:
            self._queries.clear()
        self._queries[raw] = text
        return text

    def primary(
        self, path: str, raw_query: bytes, scheme: str, host: bytes | None, scope: str
    ) -> str:
        """Primary key of a request (``scope``: ``""``, ``u:<subject>`` or ``t:<tenant>``)."""
        memo = (path, raw_query, scheme, host, scope)
        key = self._primaries.get(memo)
        if key is None:
            host_part = key_text(host.decode("latin-1").lower()) if self._host and host else ""
            key = (
                f"{key_text(path)}?{self.query(raw_query)}|{scheme}://{host_part}|{key_text(scope)}"
            )
            if len(self._primaries) >= _KEY_MEMO:
                self._primaries.clear()
            self._primaries[memo] = key
        return key

"""Stored responses: what goes into the tiered cache, and the messages a stored response becomes.

An entry is a plain dict of JSON-able values and bytes (the tiered cache's value types), built
once when a response is stored and never mutated afterwards (the in-process tier hands the same
object to every hit). Its headers are the terminal's, less hop-by-hop fields, ``Age``, tag
headers and the fields ``private="…"``/``no-cache="…"`` name, with a ``Content-Length`` of the
stored body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bastion.cache.http.policy import Freshness, Header, ResponseFacts, freshness, read_response
from bastion.proxy.headers import HOP_BY_HOP

__all__ = ["Entry", "build_entry", "entry_headers", "not_modified_headers", "refreshed_entry"]

Entry = dict[str, Any]

_NOT_STORED = HOP_BY_HOP | {b"age", b"x-cache", b"content-length"}
"""Fields an entry never keeps: the connection's, and those each answer computes again."""
_IN_304 = frozenset(
    {
        b"cache-control",
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"last-modified",
        b"vary",
    }
)
"""Fields a 304 carries (RFC 9110 §15.4.5)."""
_NO_BODY = frozenset({204, 304})


def entry_headers(
    headers: Sequence[Header], facts: ResponseFacts, drop: frozenset[bytes]
) -> list[Header]:
    """The headers worth storing: lower-case names, without hop-by-hop fields (and those
    ``Connection`` names), ``drop`` (tag headers) and fields the directives keep out."""
    cc = facts.cache_control
    named = {
        item.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for item in value.split(b",")
    }
    excluded = _NOT_STORED | drop | named | set(cc.private_fields) | set(cc.no_cache_fields)
    return [(name.lower(), value) for name, value in headers if name.lower() not in excluded]


def build_entry(
    *,
    status: int,
    headers: list[Header],
    body: bytes,
    facts: ResponseFacts,
    fresh: Freshness,
    received: float,
    age: float,
    vary_values: Sequence[bytes],
    tags: Sequence[str],
) -> Entry:
    """An entry for a complete response (``headers`` already filtered by :func:`entry_headers`)."""
    stored = list(headers)
    if status not in _NO_BODY:
        stored.append((b"content-length", str(len(body)).encode("ascii")))
    modified_raw = next((v for n, v in headers if n == b"last-modified"), None)
    return {
        "status": status,
        "headers": stored,
        "body": body,
        "received": received,
        "age": age,
        "lifetime": fresh.lifetime,
        "swr": fresh.stale_while_revalidate,
        "sie": fresh.stale_if_error,
        "strict": fresh.strict,
        "etag": facts.etag,
        "modified": facts.last_modified,
        "modified_raw": modified_raw,
        "vary": list(facts.vary),
        "varies": list(vary_values),
        "tags": list(tags),
    }


def refreshed_entry(
    entry: Entry,
    headers: list[Header],
    *,
    received: float,
    age: float,
    default_ttl: float,
    ttl_override: float | None,
) -> Entry:
    """``entry`` with the headers a 304 freshened (RFC 9111 §4.3.4) and their new freshness."""
    facts = read_response(entry["status"], headers)
    fresh = freshness(
        facts, response_time=received, default_ttl=default_ttl, ttl_override=ttl_override
    )
    updated = dict(entry)
    updated.update(
        headers=headers,
        received=received,
        age=age,
        lifetime=fresh.lifetime,
        swr=fresh.stale_while_revalidate,
        sie=fresh.stale_if_error,
        strict=fresh.strict,
        etag=facts.etag,
        modified=facts.last_modified,
        modified_raw=next((v for n, v in headers if n == b"last-modified"), None),
    )
    return updated


def not_modified_headers(entry: Entry) -> list[Header]:
    """The stored fields a 304 from the cache carries."""
    return [(name, value) for name, value in entry["headers"] if name in _IN_304]

"""Parsing the fields RFC 9111 caching decisions read: ``Cache-Control``, HTTP dates, ``Vary``.

Every parser takes raw ``bytes`` field values as ASGI carries them and never raises: a value that
does not parse is read the way RFC 9111 asks a cache to read invalid freshness information (as
stale, §4.2.1), never as a reason to store more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = [
    "DELTA_MAX",
    "CacheControl",
    "field_list",
    "http_date",
    "parse_cache_control",
]

DELTA_MAX = 2_147_483_648
"""RFC 9111 §1.2.2: a delta-seconds value too large to represent is read as 2^31."""

_MEMO_LIMIT = 512
"""Distinct ``Cache-Control`` values whose parse is remembered (responses repeat theirs)."""


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The directives of one message's ``Cache-Control`` (RFC 9111 §5.2).

    A delta directive with an invalid argument (``max-age=soon``) is read as ``0`` (stale);
    repeated directives keep their first occurrence (§4.2.1).
    """

    no_store: bool = False
    no_cache: bool = False
    """Unqualified ``no-cache``: every reuse needs revalidation."""
    no_cache_fields: tuple[bytes, ...] = ()
    """``no-cache="Field, …"``: those fields are never sent from the cache."""
    private: bool = False
    """Unqualified ``private``: a shared cache must not store the response."""
    private_fields: tuple[bytes, ...] = ()
    """``private="Field, …"``: those fields are never stored."""
    public: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    no_transform: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    max_stale: int | None = None
    """Request: accept a response stale by up to this (``max-stale`` without a value: any)."""
    min_fresh: int | None = None
    only_if_cached: bool = False
    must_understand: bool = False
    """Store only if the cache implements the status's caching rules; ``no-store`` is then
    ignored (RFC 9111 §5.2.2.3)."""


EMPTY = CacheControl()

_memo: dict[bytes, CacheControl] = {}


def _delta(value: str | None) -> int:
    """delta-seconds (§1.2.2); an invalid or missing argument is ``0`` (treated as stale)."""
    if value is None or not value.isdigit() or not value.isascii():
        return 0
    return min(int(value), DELTA_MAX)


def _directives(text: str) -> list[tuple[str, str | None]]:
    """Split a ``Cache-Control`` value into (lower-case name, argument) pairs, honouring
    quoted strings (``no-cache="a, b"`` is one directive)."""
    pairs: list[tuple[str, str | None]] = []
    index, length = 0, len(text)
    while index < length:
        end = index
        while end < length and text[end] not in ",=":
            end += 1
        name = text[index:end].strip().lower()
        argument: str | None = None
        index = end
        if index < length and text[index] == "=":
            index += 1
            while index < length and text[index] in " \t":
                index += 1
            if index < length and text[index] == '"':
                index += 1
                chars: list[str] = []
                while index < length and text[index] != '"':
                    if text[index] == "\\" and index + 1 < length:
                        index += 1
                    chars.append(text[index])
                    index += 1
                argument = "".join(chars)
                while index < length and text[index] != ",":
                    index += 1
            else:
                end = index
                while end < length and text[end] != ",":
                    end += 1
                argument = text[index:end].strip()
                index = end
        index += 1  # the comma
        if name:
            pairs.append((name, argument))
    return pairs


def _fields(argument: str | None) -> tuple[bytes, ...]:
    if not argument:
        return ()
    return tuple(
        item.strip().lower().encode("latin-1") for item in argument.split(",") if item.strip()
    )


def parse_cache_control(values: list[bytes]) -> CacheControl:
    """The directives of a message's ``Cache-Control`` field lines (``values``, in order)."""
    if not values:
        return EMPTY
    raw = values[0] if len(values) == 1 else b", ".join(values)
    known = _memo.get(raw)
    if known is not None:
        return known
    found: dict[str, str | None] = {}
    for name, argument in _directives(raw.decode("latin-1")):
        found.setdefault(name, argument)
    deltas = {
        name: _delta(found[name])
        for name in (
            "max-age",
            "s-maxage",
            "stale-while-revalidate",
            "stale-if-error",
            "min-fresh",
        )
        if name in found
    }
    max_stale: int | None = None
    if "max-stale" in found:
        argument = found["max-stale"]
        max_stale = DELTA_MAX if argument is None else _delta(argument)
    no_cache = "no-cache" in found
    private = "private" in found
    parsed = CacheControl(
        no_store="no-store" in found,
        no_cache=no_cache and not found["no-cache"],
        no_cache_fields=_fields(found.get("no-cache")),
        private=private and not found["private"],
        private_fields=_fields(found.get("private")),
        public="public" in found,
        max_age=deltas.get("max-age"),
        s_maxage=deltas.get("s-maxage"),
        must_revalidate="must-revalidate" in found,
        proxy_revalidate="proxy-revalidate" in found,
        no_transform="no-transform" in found,
        stale_while_revalidate=deltas.get("stale-while-revalidate"),
        stale_if_error=deltas.get("stale-if-error"),
        max_stale=max_stale,
        min_fresh=deltas.get("min-fresh"),
        only_if_cached="only-if-cached" in found,
        must_understand="must-understand" in found,
    )
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[raw] = parsed
    return parsed


def http_date(value: bytes | None) -> float | None:
    """Seconds since the epoch of an HTTP-date (RFC 9110 §5.6.7, all three formats), or
    ``None`` when ``value`` is missing or not a date (``Expires: 0`` included)."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # asctime format: always GMT (RFC 9110 §5.6.7)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def field_list(values: list[bytes]) -> tuple[bytes, ...]:
    """The lower-case members of a list-valued field (``Vary``, ``Connection``) over all its
    field lines, in order, without duplicates."""
    members: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            member = item.strip().lower()
            if member and member not in members:
                members.append(member)
    return tuple(members)

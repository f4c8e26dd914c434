"""RFC 9111 decisions as pure functions: may a response be stored, for how long is it fresh, how
old is it, may a stale one be served, does a conditional request match, which request headers a
stored response varies on, which part of a body a ``Range`` asks for.

Bastion is a *shared* cache (RFC 9111 §1): ``s-maxage`` wins over ``max-age``, ``private`` and
responses to authenticated requests are not stored unless the response allows it (§3.5), and a
stale response is served only where a directive permits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bastion.cache.http.directives import (
    CacheControl,
    field_list,
    http_date,
    parse_cache_control,
)

__all__ = [
    "ABSENT",
    "HEURISTIC_STATUSES",
    "Conditional",
    "Freshness",
    "Header",
    "ResponseFacts",
    "byte_range",
    "evaluate_conditional",
    "freshen_headers",
    "freshness",
    "initial_age",
    "normalise_accept_encoding",
    "read_response",
    "refusal",
    "stale_allowed",
    "values_of",
    "vary_values",
]

Header = tuple[bytes, bytes]

HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses cacheable by default (RFC 9110 §15.1), less 206: a partial body is never stored."""

_NOT_IN_304 = frozenset({b"content-length", b"content-encoding", b"transfer-encoding"})
"""Fields of a 304 that never replace the stored response's own (RFC 9111 §3.2)."""


def values_of(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Every value of the field ``name`` (lower case) in ``headers``, in order."""
    return [value for key, value in headers if key.lower() == name]


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What caching reads from one response's header block."""

    status: int
    cache_control: CacheControl
    date: float | None
    expires: float | None
    """``Expires``; an invalid one (``0``) is a time in the past (§5.3)."""
    has_expires: bool
    last_modified: float | None
    etag: bytes | None
    age: int
    vary: tuple[bytes, ...]
    sets_cookie: bool
    partial: bool
    """A ``Content-Range`` (a 206 or a 416): never stored as a full body."""


def read_response(status: int, headers: Sequence[Header]) -> ResponseFacts:
    """The caching facts of a response with ``status`` and ``headers``."""
    cache_control: list[bytes] = []
    vary: list[bytes] = []
    date = expires = last_modified = etag = age = None
    has_expires = sets_cookie = partial = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"cache-control":
            cache_control.append(value)
        elif name == b"vary":
            vary.append(value)
        elif name == b"date":
            date = value
        elif name == b"expires":
            if not has_expires:
                expires = value
            has_expires = True
        elif name == b"last-modified":
            last_modified = value
        elif name == b"etag":
            etag = value.strip()
        elif name == b"age":
            age = value
        elif name == b"set-cookie":
            sets_cookie = True
        elif name == b"content-range":
            partial = True
    expires_at = http_date(expires)
    return ResponseFacts(
        status=status,
        cache_control=parse_cache_control(cache_control),
        date=http_date(date),
        expires=expires_at if expires_at is not None or not has_expires else 0.0,
        has_expires=has_expires,
        last_modified=http_date(last_modified),
        etag=etag or None,
        age=int(age) if age is not None and age.strip().isdigit() else 0,
        vary=field_list(vary),
        sets_cookie=sets_cookie,
        partial=partial or status == 206,
    )


def refusal(
    facts: ResponseFacts,
    *,
    statuses: frozenset[int],
    request_cc: CacheControl,
    authenticated: bool,
    keyed: str = "",
) -> str | None:
    """Why a shared cache must not store this response to a ``GET`` (RFC 9111 §3), or ``None``
    when it may.

    ``authenticated``: the request carried ``Authorization``, a cookie or a verified principal;
    ``keyed``: ``"user"`` or ``"tenant"`` when the key includes the principal's subject or
    tenant, so the stored response is theirs alone: credentials no longer prevent storing, and
    under a user's own key a ``private`` response may be kept too.
    """
    cc = facts.cache_control
    if facts.partial:
        return "partial"
    if facts.status not in statuses:
        return "status"
    # must-understand: the status is one this cache implements (checked above), so the no-store
    # sent alongside it for older caches is ignored (RFC 9111 §5.2.2.3).
    if cc.no_store and not cc.must_understand:
        return "no-store"
    if request_cc.no_store:
        return "request-no-store"
    if cc.private and keyed != "user":
        return "private"
    if facts.sets_cookie:
        return "set-cookie"
    if b"*" in facts.vary:
        return "vary-star"
    allowed = cc.public or cc.must_revalidate or cc.s_maxage is not None
    if authenticated and not keyed and not allowed:
        return "authenticated"
    return None


@dataclass(frozen=True, slots=True)
class Freshness:
    """How long a stored response may be served, and how it may be served stale."""

    lifetime: float
    """Seconds fresh from its initial age (0: revalidate on every use)."""
    stale_while_revalidate: float
    stale_if_error: float
    strict: bool
    """``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` or ``no-cache``: never served
    stale (RFC 9111 §4.2.4, §5.2.2.4)."""
    explicit: bool
    """The lifetime came from the response (``s-maxage``, ``max-age``, ``Expires``)."""


def freshness(
    facts: ResponseFacts,
    *,
    response_time: float,
    default_ttl: float,
    ttl_override: float | None = None,
) -> Freshness:
    """The freshness of a response received at ``response_time`` (RFC 9111 §4.2.1).

    ``default_ttl`` is the heuristic lifetime (§4.2.2) of a response without explicit freshness,
    applied only to :data:`HEURISTIC_STATUSES`; ``ttl_override`` (a route's ``ttl``) replaces an
    explicit lifetime. ``no-cache`` always means a lifetime of 0.
    """
    cc = facts.cache_control
    lifetime: float | None = None
    if cc.s_maxage is not None:
        lifetime = cc.s_maxage
    elif cc.max_age is not None:
        lifetime = cc.max_age
    elif facts.has_expires:
        assert facts.expires is not None
        date = facts.date if facts.date is not None else response_time
        lifetime = max(facts.expires - date, 0.0)
    explicit = lifetime is not None
    if lifetime is not None and ttl_override is not None:
        lifetime = ttl_override
    if lifetime is None:
        lifetime = default_ttl if facts.status in HEURISTIC_STATUSES else 0.0
    if cc.no_cache:
        lifetime = 0.0
    strict = cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None or cc.no_cache
    return Freshness(
        lifetime=float(lifetime),
        stale_while_revalidate=0.0 if strict else float(cc.stale_while_revalidate or 0),
        stale_if_error=0.0 if strict else float(cc.stale_if_error or 0),
        strict=strict,
        explicit=explicit,
    )


def initial_age(facts: ResponseFacts, *, request_time: float, response_time: float) -> float:
    """``corrected_initial_age`` of RFC 9111 §4.2.3: the response's age when it arrived."""
    date = facts.date if facts.date is not None else response_time
    apparent = max(0.0, response_time - date)
    corrected = facts.age + (response_time - request_time)
    return max(apparent, corrected)


def stale_allowed(
    freshness_: Freshness,
    staleness: float,
    request_cc: CacheControl,
    *,
    error: bool = False,
) -> bool:
    """Whether a response ``staleness`` seconds past its lifetime may be served: within
    ``stale-while-revalidate`` (while revalidating), ``stale-if-error`` (``error``: the
    terminal failed) or the request's ``max-stale``."""
    if freshness_.strict:
        return False
    if request_cc.max_stale is not None and staleness <= request_cc.max_stale:
        return True
    window = freshness_.stale_while_revalidate
    if error:
        window = max(freshness_.stale_if_error, float(request_cc.stale_if_error or 0))
    return window > 0 and staleness <= window


class Conditional:
    """Outcomes of :func:`evaluate_conditional`."""

    NONE = 0
    """No precondition the cache evaluates: serve the stored response."""
    NOT_MODIFIED = 1
    """Answer 304."""
    FULL = 2
    """A precondition was evaluated and does not hold: serve the whole response."""


def _weak_match(tag: bytes, etag: bytes) -> bool:
    return tag.removeprefix(b"W/") == etag.removeprefix(b"W/")


def evaluate_conditional(
    request_headers: Iterable[Header],
    *,
    etag: bytes | None,
    last_modified: float | None,
) -> int:
    """``If-None-Match`` (weak comparison, RFC 9110 §13.1.2), else ``If-Modified-Since``
    against a stored response's validators (RFC 9111 §4.3.2)."""
    if_none_match: list[bytes] = []
    since: bytes | None = None
    for name, value in request_headers:
        if name == b"if-none-match":
            if_none_match.append(value)
        elif name == b"if-modified-since":
            since = value
    if if_none_match:
        tags = [item.strip() for value in if_none_match for item in value.split(b",")]
        if b"*" in tags or (etag is not None and any(_weak_match(t, etag) for t in tags if t)):
            return Conditional.NOT_MODIFIED
        return Conditional.FULL
    if since is not None:
        moment = http_date(since)
        if moment is None or last_modified is None:
            return Conditional.NONE
        return Conditional.NOT_MODIFIED if last_modified <= moment else Conditional.FULL
    return Conditional.NONE


def freshen_headers(stored: Sequence[Header], fresh: Sequence[Header]) -> list[Header]:
    """The stored response's headers updated by a 304's (RFC 9111 §3.2, §4.3.4): each field the
    304 carries replaces the stored one, framing fields excepted."""
    replaced = {name.lower() for name, _ in fresh if name.lower() not in _NOT_IN_304}
    kept = [(name, value) for name, value in stored if name.lower() not in replaced]
    kept.extend((name.lower(), value) for name, value in fresh if name.lower() in replaced)
    return kept


ABSENT = b"\n"
"""The value of a varied field the request does not carry (no field value holds a line feed):
RFC 9111 §4.1 matches an absent field only with an absent one, never with an empty one."""

_Q_ONE = frozenset({b"q=1", b"q=1.", b"q=1.0", b"q=1.00", b"q=1.000"})


def normalise_accept_encoding(values: Sequence[bytes]) -> bytes:
    """``Accept-Encoding`` reduced to what selects a representation, where that is certain: a
    plain list of codings (each without parameters, or ``q=1``) becomes the sorted codings
    (``x-gzip`` as ``gzip``), so ``gzip, br`` and ``br;q=1, gzip`` share a variant. Any other
    value (a ``q=0``, preferences, other parameters) is kept as sent, trimmed and in lower
    case: upstreams read those differently (some ignore ``q``), so it is its own variant."""
    if not values:
        return ABSENT
    accepted: set[bytes] = set()
    items: list[bytes] = []
    plain = True
    for value in values:
        for item in value.lower().split(b","):
            item = item.strip()
            if not item:
                continue
            items.append(item)
            coding, _, params = item.partition(b";")
            coding = coding.strip()
            if params and params.replace(b" ", b"").replace(b"\t", b"") not in _Q_ONE:
                plain = False
            elif coding:
                accepted.add(b"gzip" if coding == b"x-gzip" else coding)
    if not plain:
        return b",".join(items)
    return b",".join(sorted(accepted))


def vary_values(request_headers: Sequence[Header], vary: Sequence[bytes]) -> list[bytes]:
    """The request's values of the fields a response varies on (RFC 9111 §4.1), one per field:
    field lines joined, whitespace around commas removed, ``Accept-Encoding`` normalised, and
    :data:`ABSENT` for a field the request does not carry. ``_`` and ``-`` in names are the
    same field (CGI-style upstreams fold them)."""
    values: list[bytes] = []
    for raw_name in vary:
        name = raw_name.replace(b"_", b"-")
        lines = [value for key, value in request_headers if key.replace(b"_", b"-") == name]
        if name == b"accept-encoding":
            values.append(normalise_accept_encoding(lines))
        elif not lines:
            values.append(ABSENT)
        else:
            joined = b",".join(lines)
            values.append(b",".join(part.strip() for part in joined.split(b",")))
    return values


def byte_range(header: bytes, size: int) -> tuple[int, int] | None:
    """The one ``bytes`` range (first, last, inclusive) of a ``Range`` value over a body of
    ``size`` bytes; ``(-1, -1)`` when it is syntactically valid but unsatisfiable; ``None``
    when it is not a single byte range (the cache then passes the request on)."""
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition(b"-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text.isdigit() or (not first_text and last_text.isdigit())):
        return None
    if last_text and not last_text.isdigit():
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return (-1, -1)
        return (max(size - suffix, 0), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return (-1, -1)
    last = int(last_text) if last_text else size - 1
    return (first, min(last, size - 1))

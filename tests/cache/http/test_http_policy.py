"""RFC 9111 decisions as pure functions: directives, storability, freshness, age, stale serving,
conditional requests, Vary and byte ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.cache.http.directives import (
    DELTA_MAX,
    CacheControl,
    field_list,
    http_date,
    parse_cache_control,
)
from bastion.cache.http.policy import (
    ABSENT,
    HEURISTIC_STATUSES,
    Conditional,
    byte_range,
    evaluate_conditional,
    freshen_headers,
    freshness,
    initial_age,
    normalise_accept_encoding,
    read_response,
    refusal,
    stale_allowed,
    vary_values,
)

NOW = 1_800_000_500.0
DATE = b"Fri, 15 Jan 2027 08:00:00 GMT"
DATE_TS = 1_800_000_000.0
STATUSES = frozenset(HEURISTIC_STATUSES)


def cc(value: str) -> CacheControl:
    return parse_cache_control([value.encode()])


# --- Cache-Control parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "attribute", "expected"),
    [
        ("no-store", "no_store", True),
        ("NO-STORE", "no_store", True),
        ("no-cache", "no_cache", True),
        ('no-cache="Set-Cookie, X-Secret"', "no_cache", False),
        ('no-cache="Set-Cookie, X-Secret"', "no_cache_fields", (b"set-cookie", b"x-secret")),
        ("private", "private", True),
        ('private="X-User"', "private", False),
        ('private="X-User"', "private_fields", (b"x-user",)),
        ("public, max-age=60", "public", True),
        ("public, max-age=60", "max_age", 60),
        ("max-age=60, max-age=10", "max_age", 60),
        ('max-age="60"', "max_age", 60),
        ("max-age=soon", "max_age", 0),
        ("max-age=-5", "max_age", 0),
        ("max-age=99999999999999", "max_age", DELTA_MAX),
        ("s-maxage=30", "s_maxage", 30),
        ("must-revalidate", "must_revalidate", True),
        ("proxy-revalidate", "proxy_revalidate", True),
        ("stale-while-revalidate=15", "stale_while_revalidate", 15),
        ("stale-if-error=600", "stale_if_error", 600),
        ("max-stale", "max_stale", DELTA_MAX),
        ("max-stale=5", "max_stale", 5),
        ("min-fresh=20", "min_fresh", 20),
        ("only-if-cached", "only_if_cached", True),
        ("must-understand, no-store", "must_understand", True),
        ("no-transform", "no_transform", True),
        ('community="UCI", max-age=5', "max_age", 5),
        ('x="a,max-age=9", max-age=3', "max_age", 3),
        (" , ,max-age=7,, ", "max_age", 7),
    ],
)
def test_cache_control_directives(value: str, attribute: str, expected: object) -> None:
    assert getattr(cc(value), attribute) == expected


def test_cache_control_over_several_field_lines() -> None:
    parsed = parse_cache_control([b"public", b"max-age=10"])
    assert parsed.public
    assert parsed.max_age == 10


def test_http_dates_in_all_three_formats_and_invalid_ones() -> None:
    assert http_date(DATE) == DATE_TS
    assert http_date(b"Friday, 15-Jan-27 08:00:00 GMT") == DATE_TS
    assert http_date(b"Fri Jan 15 08:00:00 2027") == DATE_TS
    for invalid in (b"0", b"-1", b"yesterday", b"", None):
        assert http_date(invalid) is None


def test_field_list_merges_lines_lowercases_and_deduplicates() -> None:
    assert field_list([b"Accept-Encoding, Origin", b"origin , X-Tenant"]) == (
        b"accept-encoding",
        b"origin",
        b"x-tenant",
    )


# --- storability (RFC 9111 §3) ---------------------------------------------------------------

SHARED: dict[str, object] = {"authenticated": False, "keyed": ""}

STORE_TABLE = [
    # id, status, headers, request directives, request kind, expected refusal
    ("max-age", 200, [(b"cache-control", b"max-age=60")], "", SHARED, None),
    ("no-store", 200, [(b"cache-control", b"no-store, max-age=60")], "", SHARED, "no-store"),
    (
        "request-no-store",
        200,
        [(b"cache-control", b"max-age=60")],
        "no-store",
        SHARED,
        "request-no-store",
    ),
    ("private", 200, [(b"cache-control", b"private, max-age=60")], "", SHARED, "private"),
    (
        "private-per-user",
        200,
        [(b"cache-control", b"private, max-age=60")],
        "",
        {"authenticated": True, "keyed": "user"},
        None,
    ),
    ("qualified-private", 200, [(b"cache-control", b'private="x-a", max-age=9')], "", SHARED, None),
    (
        "set-cookie",
        200,
        [(b"cache-control", b"public, max-age=60"), (b"set-cookie", b"sid=1")],
        "",
        SHARED,
        "set-cookie",
    ),
    (
        "vary-star",
        200,
        [(b"cache-control", b"max-age=60"), (b"vary", b"*")],
        "",
        SHARED,
        "vary-star",
    ),
    (
        "vary-star-in-list",
        200,
        [(b"cache-control", b"max-age=60"), (b"vary", b"Origin, *")],
        "",
        SHARED,
        "vary-star",
    ),
    ("status-500", 500, [(b"cache-control", b"max-age=60")], "", SHARED, "status"),
    ("status-302", 302, [(b"cache-control", b"max-age=60")], "", SHARED, "status"),
    ("partial-206", 206, [(b"cache-control", b"max-age=60")], "", SHARED, "partial"),
    (
        "content-range",
        200,
        [(b"cache-control", b"max-age=60"), (b"content-range", b"bytes 0-1/10")],
        "",
        SHARED,
        "partial",
    ),
    (
        "auth-plain-max-age",
        200,
        [(b"cache-control", b"max-age=60")],
        "",
        {"authenticated": True, "keyed": ""},
        "authenticated",
    ),
    (
        "auth-public",
        200,
        [(b"cache-control", b"public, max-age=60")],
        "",
        {"authenticated": True, "keyed": ""},
        None,
    ),
    (
        "auth-s-maxage",
        200,
        [(b"cache-control", b"s-maxage=60")],
        "",
        {"authenticated": True, "keyed": ""},
        None,
    ),
    (
        "auth-must-revalidate",
        200,
        [(b"cache-control", b"must-revalidate, max-age=60")],
        "",
        {"authenticated": True, "keyed": ""},
        None,
    ),
    (
        "auth-public-but-private",
        200,
        [(b"cache-control", b"public, private, max-age=60")],
        "",
        {"authenticated": True, "keyed": ""},
        "private",
    ),
    ("404-heuristic", 404, [], "", SHARED, None),
    (
        "must-understand-known-status",
        200,
        [(b"cache-control", b"must-understand, no-store, max-age=60")],
        "",
        SHARED,
        None,
    ),
    (
        "must-understand-unknown-status",
        299,
        [(b"cache-control", b"must-understand, no-store, max-age=60")],
        "",
        SHARED,
        "status",
    ),
    (
        "must-understand-request-no-store",
        200,
        [(b"cache-control", b"must-understand, no-store, max-age=60")],
        "no-store",
        SHARED,
        "request-no-store",
    ),
    (
        "private-per-tenant",
        200,
        [(b"cache-control", b"private, max-age=60")],
        "",
        {"authenticated": True, "keyed": "tenant"},
        "private",
    ),
    (
        "auth-per-tenant",
        200,
        [(b"cache-control", b"max-age=60")],
        "",
        {"authenticated": True, "keyed": "tenant"},
        None,
    ),
    (
        "set-cookie-per-user",
        200,
        [(b"cache-control", b"private, max-age=60"), (b"set-cookie", b"a=1")],
        "",
        {"authenticated": True, "keyed": "user"},
        "set-cookie",
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "request_cc", "kind", "expected"),
    [row[1:] for row in STORE_TABLE],
    ids=[row[0] for row in STORE_TABLE],
)
def test_storability(
    status: int,
    headers: list[tuple[bytes, bytes]],
    request_cc: str,
    kind: dict[str, object],
    expected: str | None,
) -> None:
    facts = read_response(status, headers)
    assert refusal(facts, statuses=STATUSES, request_cc=cc(request_cc), **kind) == expected


# --- freshness and age (RFC 9111 §4.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "default_ttl", "override", "lifetime", "strict"),
    [
        ([(b"cache-control", b"max-age=60")], 0.0, None, 60.0, False),
        ([(b"cache-control", b"max-age=60, s-maxage=5")], 0.0, None, 5.0, True),
        ([(b"cache-control", b"max-age=60, no-cache")], 0.0, None, 0.0, True),
        ([(b"cache-control", b"max-age=60, must-revalidate")], 0.0, None, 60.0, True),
        ([(b"cache-control", b"max-age=60, proxy-revalidate")], 0.0, None, 60.0, True),
        (
            [(b"date", DATE), (b"expires", b"Fri, 15 Jan 2027 08:02:00 GMT")],
            0.0,
            None,
            120.0,
            False,
        ),
        ([(b"date", DATE), (b"expires", b"0")], 30.0, None, 0.0, False),
        ([(b"cache-control", b"max-age=5"), (b"expires", b"0")], 0.0, None, 5.0, False),
        ([], 30.0, None, 30.0, False),
        ([], 0.0, None, 0.0, False),
        ([(b"cache-control", b"max-age=60")], 0.0, 3600.0, 3600.0, False),
        ([(b"cache-control", b"no-cache")], 0.0, 3600.0, 0.0, True),
        ([], 30.0, 3600.0, 30.0, False),
    ],
)
def test_freshness_lifetime(
    headers: list[tuple[bytes, bytes]],
    default_ttl: float,
    override: float | None,
    lifetime: float,
    strict: bool,
) -> None:
    fresh = freshness(
        read_response(200, headers),
        response_time=DATE_TS,
        default_ttl=default_ttl,
        ttl_override=override,
    )
    assert fresh.lifetime == lifetime
    assert fresh.strict is strict


def test_heuristic_freshness_only_for_statuses_cacheable_by_default() -> None:
    fresh = freshness(read_response(201, []), response_time=NOW, default_ttl=30.0)
    assert fresh.lifetime == 0.0


def test_initial_age_takes_the_larger_of_apparent_and_corrected_age() -> None:
    facts = read_response(200, [(b"date", DATE), (b"age", b"10")])
    # Apparent age: 5 s between the Date and arrival; corrected: Age 10 + 2 s of delay.
    assert initial_age(facts, request_time=DATE_TS + 3, response_time=DATE_TS + 5) == 12.0
    older = read_response(200, [(b"date", DATE)])
    assert initial_age(older, request_time=DATE_TS + 99, response_time=DATE_TS + 100) == 100.0
    clock_ahead = read_response(200, [(b"date", b"Fri, 15 Jan 2027 09:00:00 GMT")])
    assert initial_age(clock_ahead, request_time=DATE_TS, response_time=DATE_TS) == 0.0


@pytest.mark.parametrize(
    ("response_cc", "request_cc", "staleness", "error", "allowed"),
    [
        ("max-age=10, stale-while-revalidate=30", "", 20.0, False, True),
        ("max-age=10, stale-while-revalidate=30", "", 31.0, False, False),
        ("max-age=10, stale-if-error=60", "", 50.0, True, True),
        ("max-age=10, stale-if-error=60", "", 50.0, False, False),
        ("max-age=10, stale-if-error=60", "", 61.0, True, False),
        ("max-age=10", "stale-if-error=60", 50.0, True, True),
        ("max-age=10, must-revalidate, stale-if-error=60", "", 1.0, True, False),
        ("s-maxage=10, stale-while-revalidate=60", "", 1.0, False, False),
        ("max-age=10", "max-stale=5", 4.0, False, True),
        ("max-age=10", "max-stale=5", 6.0, False, False),
        ("max-age=10", "max-stale", 9999.0, False, True),
        ("max-age=10, must-revalidate", "max-stale", 1.0, False, False),
        ("max-age=10", "", 0.5, False, False),
    ],
)
def test_stale_serving(
    response_cc: str, request_cc: str, staleness: float, error: bool, allowed: bool
) -> None:
    fresh = freshness(
        read_response(200, [(b"cache-control", response_cc.encode())]),
        response_time=NOW,
        default_ttl=0.0,
    )
    assert stale_allowed(fresh, staleness, cc(request_cc), error=error) is allowed


# --- conditional requests ----------------------------------------------------------------------

LAST_MODIFIED = DATE_TS


@pytest.mark.parametrize(
    ("headers", "etag", "expected"),
    [
        ([(b"if-none-match", b'"v1"')], b'"v1"', Conditional.NOT_MODIFIED),
        ([(b"if-none-match", b'W/"v1"')], b'"v1"', Conditional.NOT_MODIFIED),
        ([(b"if-none-match", b'"v1"')], b'W/"v1"', Conditional.NOT_MODIFIED),
        ([(b"if-none-match", b'"v0", "v1"')], b'"v1"', Conditional.NOT_MODIFIED),
        ([(b"if-none-match", b'"v0"'), (b"if-none-match", b'"v1"')], b'"v1"', 1),
        ([(b"if-none-match", b"*")], b'"v1"', Conditional.NOT_MODIFIED),
        ([(b"if-none-match", b'"v2"')], b'"v1"', Conditional.FULL),
        ([(b"if-none-match", b'"v2"')], None, Conditional.FULL),
        # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
        (
            [(b"if-none-match", b'"v2"'), (b"if-modified-since", b"Fri, 15 Jan 2027 09:00:00 GMT")],
            b'"v1"',
            Conditional.FULL,
        ),
        ([(b"if-modified-since", b"Fri, 15 Jan 2027 09:00:00 GMT")], None, 1),
        ([(b"if-modified-since", DATE)], None, Conditional.NOT_MODIFIED),
        ([(b"if-modified-since", b"Fri, 15 Jan 2027 07:00:00 GMT")], None, Conditional.FULL),
        ([(b"if-modified-since", b"garbage")], None, Conditional.NONE),
        ([], b'"v1"', Conditional.NONE),
    ],
)
def test_conditional_evaluation(
    headers: list[tuple[bytes, bytes]], etag: bytes | None, expected: int
) -> None:
    assert evaluate_conditional(headers, etag=etag, last_modified=LAST_MODIFIED) == expected


def test_a_304_freshens_the_stored_headers_but_never_its_framing() -> None:
    stored = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"cache-control", b"max-age=1"),
        (b"etag", b'"v1"'),
    ]
    fresh = [(b"Cache-Control", b"max-age=99"), (b"content-length", b"0"), (b"x-new", b"1")]
    merged = freshen_headers(stored, fresh)
    assert (b"cache-control", b"max-age=99") in merged
    assert (b"cache-control", b"max-age=1") not in merged
    assert (b"content-length", b"5") in merged
    assert (b"content-length", b"0") not in merged
    assert (b"x-new", b"1") in merged
    assert (b"etag", b'"v1"') in merged


# --- Vary ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ([b"gzip, br"], [b"br;q=1, gzip"], True),
        ([b"gzip, br"], [b"br", b"GZIP"], True),
        ([b"gzip, x-gzip"], [b"gzip"], True),
        ([b"gzip ;q=1.0"], [b"gzip"], True),
        ([b"gzip"], [b"br"], False),
        ([b"gzip"], [], False),
        # Absent is not empty, and anything but a plain list is its own variant: an upstream
        # that ignores q compresses for "gzip;q=0" (RFC 9111 §4.1).
        ([b""], [], False),
        ([b"gzip;q=0"], [], False),
        ([b"gzip;q=0"], [b""], False),
        ([b"gzip, br;q=0"], [b"gzip"], False),
        ([b"gzip;q=0.5, br"], [b"gzip, br;q=0.5"], False),
        ([b"gzip;q=bad"], [], False),
        ([b"gzip;level=9"], [b"gzip"], False),
    ],
)
def test_accept_encoding_normalisation(first: list[bytes], second: list[bytes], same: bool) -> None:
    assert (normalise_accept_encoding(first) == normalise_accept_encoding(second)) is same


def test_vary_values_join_lines_and_normalise_accept_encoding() -> None:
    headers = [
        (b"accept-encoding", b"br, gzip"),
        (b"accept-language", b"en ,  fr"),
        (b"accept-language", b"de"),
    ]
    assert vary_values(headers, [b"accept-encoding", b"accept-language", b"origin"]) == [
        b"br,gzip",
        b"en,fr,de",
        ABSENT,
    ]
    assert vary_values([(b"origin", b"")], [b"origin"]) != vary_values([], [b"origin"])


# --- byte ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (b"bytes=0-4", 10, (0, 4)),
        (b"bytes=5-", 10, (5, 9)),
        (b"bytes=-3", 10, (7, 9)),
        (b"bytes=-30", 10, (0, 9)),
        (b"bytes=8-100", 10, (8, 9)),
        (b"BYTES = 1-2", 10, (1, 2)),
        (b"bytes=10-", 10, (-1, -1)),
        (b"bytes=-0", 10, (-1, -1)),
        (b"bytes=0-1,3-4", 10, None),
        (b"bytes=4-2", 10, None),
        (b"bytes=a-b", 10, None),
        (b"items=0-1", 10, None),
        (b"bytes=-", 10, None),
        (b"bytes=1-x", 10, None),
    ],
)
def test_byte_range(header: bytes, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


# --- properties ----------------------------------------------------------------------------------

FIELD_BYTES = st.binary(max_size=200)


@given(st.lists(FIELD_BYTES, max_size=3))
def test_cache_control_parsing_never_fails_and_bounds_deltas(values: list[bytes]) -> None:
    parsed = parse_cache_control(values)
    for delta in (parsed.max_age, parsed.s_maxage, parsed.stale_if_error, parsed.min_fresh):
        assert delta is None or 0 <= delta <= DELTA_MAX


@given(FIELD_BYTES)
def test_http_date_never_fails(value: bytes) -> None:
    moment = http_date(value)
    assert moment is None or isinstance(moment, float)


@given(FIELD_BYTES, st.integers(min_value=0, max_value=10_000))
def test_a_byte_range_lies_within_the_body(header: bytes, size: int) -> None:
    span = byte_range(header, size)
    if span is not None and span != (-1, -1):
        first, last = span
        assert 0 <= first <= last < size


@given(st.lists(st.sampled_from(["gzip", "br", "zstd", "deflate", "x-gzip", "br;q=1"]), max_size=5))
def test_accept_encoding_normalisation_ignores_order(codings: list[str]) -> None:
    forward = normalise_accept_encoding([", ".join(codings).encode()])
    backward = normalise_accept_encoding([", ".join(reversed(codings)).encode()])
    assert forward == backward

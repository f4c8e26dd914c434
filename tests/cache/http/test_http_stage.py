"""The HTTP cache stage against RFC 9111: directives, Vary, authenticated requests, Set-Cookie,
revalidation and 304s, unsafe-method invalidation, HEAD, ranges, sizes, coalescing, routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bastion.cache.http.keys import path_tag, upstream_tag
from bastion.cache.http.wiring import http_cache_stage
from bastion.http.asgi import Scope
from problem_assertions import assert_problem_body
from stage_harness import around

from .conftest import Client, ClientFactory, Clock, Header

MAX_AGE = [(b"cache-control", b"max-age=60")]


async def twice(client: Client, path: str = "/r", **kwargs: object) -> None:
    await client.get(path, **kwargs)  # type: ignore[arg-type]
    await client.get(path, **kwargs)  # type: ignore[arg-type]


# --- hits and misses


async def test_a_fresh_response_is_served_without_the_terminal(
    client: Client, clock: Clock
) -> None:
    client.origin.answer(headers=[*MAX_AGE, (b"content-type", b"text/plain")], body=b"hello")
    first = await client.get()
    clock.advance(7)
    second = await client.get()
    assert client.origin.calls == 1
    assert first.x_cache == "MISS"
    assert second.x_cache == "HIT"
    assert second.body == b"hello"
    assert second.header("age") == "7"
    assert second.header("content-length") == "5"
    assert second.header("x-request-id") is not None


async def test_x_cache_only_when_configured(make_client: ClientFactory) -> None:
    client = make_client(x_cache_header=False)
    client.origin.answer(headers=MAX_AGE)
    await twice(client)
    response = await client.get()
    assert client.origin.calls == 1
    assert response.x_cache is None
    assert response.header("age") == "0"


async def test_an_expired_response_is_fetched_again(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get()
    clock.advance(61)
    response = await client.get()
    assert client.origin.calls == 2
    assert response.x_cache == "MISS"


async def test_the_upstream_age_counts_against_freshness(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=[*MAX_AGE, (b"age", b"50")])
    await client.get()
    clock.advance(5)
    assert (await client.get()).header("age") == "55"
    clock.advance(6)
    await client.get()
    assert client.origin.calls == 2


# --- the directive table

DIRECTIVES = [
    # id, response headers, stored (a second GET right after is a hit)
    ("max-age", [(b"cache-control", b"max-age=60")], True),
    ("s-maxage-over-max-age-0", [(b"cache-control", b"max-age=0, s-maxage=60")], True),
    ("s-maxage-0-over-max-age", [(b"cache-control", b"max-age=60, s-maxage=0")], False),
    ("no-store", [(b"cache-control", b"no-store, max-age=60")], False),
    ("private", [(b"cache-control", b"private, max-age=60")], False),
    ("public", [(b"cache-control", b"public, max-age=60")], True),
    ("must-revalidate-fresh", [(b"cache-control", b"must-revalidate, max-age=60")], True),
    ("no-cache", [(b"cache-control", b"no-cache, max-age=60")], False),
    (
        "expires-future",
        [
            (b"date", b"Fri, 15 Jan 2027 08:00:00 GMT"),
            (b"expires", b"Fri, 15 Jan 2027 08:01:00 GMT"),
        ],
        True,
    ),
    ("expires-invalid", [(b"expires", b"0")], False),
    ("max-age-over-expires", [(b"cache-control", b"max-age=60"), (b"expires", b"0")], True),
    ("no-freshness", [], False),
    ("set-cookie", [(b"cache-control", b"public, max-age=60"), (b"set-cookie", b"a=1")], False),
    ("vary-star", [(b"cache-control", b"max-age=60"), (b"vary", b"*")], False),
    (
        "content-range",
        [(b"cache-control", b"max-age=60"), (b"content-range", b"bytes 0-3/9")],
        False,
    ),
]


@pytest.mark.parametrize(
    ("headers", "stored"), [row[1:] for row in DIRECTIVES], ids=[row[0] for row in DIRECTIVES]
)
async def test_response_directives(client: Client, headers: list[Header], stored: bool) -> None:
    client.origin.answer(headers=headers)
    await twice(client)
    assert client.origin.calls == (1 if stored else 2)


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        (200, True),
        (404, True),
        (301, True),
        (500, False),
        (503, False),
        (302, False),
        (201, False),
        (206, False),
    ],
)
async def test_only_cacheable_statuses_are_stored(
    client: Client, status: int, stored: bool
) -> None:
    client.origin.answer(status, headers=MAX_AGE)
    await twice(client)
    assert client.origin.calls == (1 if stored else 2)


async def test_default_ttl_gives_heuristic_freshness(
    make_client: ClientFactory, clock: Clock
) -> None:
    client = make_client(default_ttl=30)
    client.origin.answer()
    await twice(client)
    assert client.origin.calls == 1
    clock.advance(31)
    await client.get()
    assert client.origin.calls == 2


async def test_a_problem_response_of_the_terminal_is_not_stored(client: Client) -> None:
    client.origin.answer(
        502,
        headers=[(b"content-type", b"application/problem+json"), (b"cache-control", b"no-store")],
    )
    await twice(client)
    assert client.origin.calls == 2


# --- Vary


async def test_vary_keeps_one_variant_per_value(client: Client) -> None:
    def script(scope: Scope) -> object:
        language = dict(scope["headers"]).get(b"accept-language", b"none")
        return client.origin.reply(
            headers=[*MAX_AGE, (b"vary", b"Accept-Language")], body=b"lang=" + language
        )

    client.origin.script = script  # type: ignore[assignment]
    en = [(b"accept-language", b"en")]
    fr = [(b"accept-language", b"fr")]
    assert (await client.get(headers=en)).body == b"lang=en"
    assert (await client.get(headers=fr)).body == b"lang=fr"
    hit_en = await client.get(headers=en)
    hit_fr = await client.get(headers=fr)
    assert client.origin.calls == 2
    assert (hit_en.x_cache, hit_en.body) == ("HIT", b"lang=en")
    assert (hit_fr.x_cache, hit_fr.body) == ("HIT", b"lang=fr")
    assert (await client.get()).body == b"lang=none"
    assert client.origin.calls == 3


async def test_vary_accept_encoding_is_keyed_on_the_normalised_value(client: Client) -> None:
    client.origin.answer(
        headers=[*MAX_AGE, (b"vary", b"Accept-Encoding"), (b"content-encoding", b"gzip")]
    )
    await client.get(headers=[(b"accept-encoding", b"gzip, br")])
    same = await client.get(headers=[(b"accept-encoding", b"br;q=1.0, gzip")])
    other = await client.get(headers=[(b"accept-encoding", b"identity")])
    assert same.x_cache == "HIT"
    assert other.x_cache == "MISS"
    assert client.origin.calls == 2


# --- authenticated requests: never one user's private response to another

AUTH = [
    # id, request headers, response cache-control, stored
    ("authorization", [(b"authorization", b"Bearer alice")], b"max-age=60", False),
    ("cookie", [(b"cookie", b"session=alice")], b"max-age=60", False),
    ("principal-without-headers", [(b"x-test-user", b"alice")], b"max-age=60", False),
    ("authorization-public", [(b"authorization", b"Bearer alice")], b"public, max-age=60", True),
    ("authorization-s-maxage", [(b"authorization", b"Bearer a")], b"s-maxage=60", True),
    ("cookie-must-revalidate", [(b"cookie", b"s=a")], b"must-revalidate, max-age=60", True),
    ("principal-public", [(b"x-test-user", b"alice")], b"public, max-age=60", True),
    ("principal-private", [(b"x-test-user", b"alice")], b"private, public, max-age=60", False),
    ("authorization-private", [(b"authorization", b"Bearer a")], b"private, max-age=60", False),
    ("anonymous-private", [], b"private, max-age=60", False),
    ("authorization-no-store", [(b"authorization", b"Bearer a")], b"public, no-store", False),
]


@pytest.mark.parametrize(
    ("request_headers", "cache_control", "stored"),
    [row[1:] for row in AUTH],
    ids=[row[0] for row in AUTH],
)
async def test_authenticated_requests(
    client: Client, request_headers: list[Header], cache_control: bytes, stored: bool
) -> None:
    def script(scope: Scope) -> object:
        found = dict(scope["headers"])
        who = found.get(b"authorization") or found.get(b"cookie") or found.get(b"x-test-user")
        return client.origin.reply(
            headers=[(b"cache-control", cache_control)], body=b"for " + (who or b"anyone")
        )

    client.origin.script = script  # type: ignore[assignment]
    first = await client.get(headers=request_headers)
    stranger = await client.get()
    assert client.origin.calls == (1 if stored else 2)
    if not stored:
        assert stranger.body == b"for anyone"
        assert first.body != stranger.body or not request_headers


async def test_per_user_route_keys_on_the_principal(make_client: ClientFactory) -> None:
    client = make_client(routes=[{"paths": ["/me"], "key": "user"}])

    def script(scope: Scope) -> object:
        user = dict(scope["headers"]).get(b"x-test-user", b"nobody")
        return client.origin.reply(headers=[(b"cache-control", b"private, max-age=60")], body=user)

    client.origin.script = script  # type: ignore[assignment]
    alice = [(b"x-test-user", b"alice"), (b"authorization", b"Bearer a")]
    bob = [(b"x-test-user", b"bob"), (b"authorization", b"Bearer b")]
    assert (await client.get("/me", headers=alice)).body == b"alice"
    assert (await client.get("/me", headers=bob)).body == b"bob"
    again = await client.get("/me", headers=alice)
    assert (again.x_cache, again.body) == ("HIT", b"alice")
    assert (await client.get("/me", headers=bob)).body == b"bob"
    assert client.origin.calls == 2
    anonymous = await client.get("/me")
    assert anonymous.body == b"nobody"
    assert (await client.get("/me")).body == b"nobody"
    assert client.origin.calls == 4  # private: an anonymous response is never shared


async def test_per_tenant_route_keys_on_the_tenant(make_client: ClientFactory) -> None:
    client = make_client(routes=[{"paths": ["/org/**"], "key": "tenant"}])

    def script(scope: Scope) -> object:
        tenant = dict(scope["headers"]).get(b"x-test-tenant", b"none")
        return client.origin.reply(headers=MAX_AGE, body=tenant)

    client.origin.script = script  # type: ignore[assignment]
    a1 = [(b"x-test-user", b"u1"), (b"x-test-tenant", b"acme")]
    a2 = [(b"x-test-user", b"u2"), (b"x-test-tenant", b"acme")]
    b1 = [(b"x-test-user", b"u3"), (b"x-test-tenant", b"globex")]
    await client.get("/org/plan", headers=a1)
    shared = await client.get("/org/plan", headers=a2)
    other = await client.get("/org/plan", headers=b1)
    assert (shared.x_cache, shared.body) == ("HIT", b"acme")
    assert other.body == b"globex"
    assert client.origin.calls == 2


async def test_a_disabled_route_is_not_cached_under_another_spelling(
    make_client: ClientFactory,
) -> None:
    client = make_client(routes=[{"paths": ["/account/**"], "enabled": False}])
    client.origin.answer(headers=MAX_AGE)
    await twice(client, "/account/profile")
    await twice(client, "/Account/profile")
    await twice(client, "/account/profile/")
    assert client.origin.calls == 6
    await twice(client, "/public")
    assert client.origin.calls == 7


async def test_a_route_can_opt_in_with_its_own_ttl(
    make_client: ClientFactory, clock: Clock
) -> None:
    client = make_client(
        enabled=False, routes=[{"paths": ["/catalog/**"], "enabled": True, "ttl": "1h"}]
    )
    client.origin.answer(headers=[(b"cache-control", b"max-age=5")])
    await twice(client, "/catalog/items")
    clock.advance(600)
    await client.get("/catalog/items")
    assert client.origin.calls == 1
    await twice(client, "/other")
    assert client.origin.calls == 3


# --- Set-Cookie


async def test_a_response_setting_a_cookie_is_never_stored_nor_shared(client: Client) -> None:
    count = 0

    def script(scope: Scope) -> object:
        nonlocal count
        count += 1
        return client.origin.reply(
            headers=[
                (b"cache-control", b"public, s-maxage=60"),
                (b"set-cookie", f"sid={count}".encode()),
            ]
        )

    client.origin.script = script  # type: ignore[assignment]
    first = await client.get()
    second = await client.get()
    assert first.header("set-cookie") == "sid=1"
    assert second.header("set-cookie") == "sid=2"


# --- conditional requests and revalidation

ETAGGED = [(b"cache-control", b"max-age=60"), (b"etag", b'"v1"')]


async def test_if_none_match_on_a_hit_is_answered_304(client: Client) -> None:
    client.origin.answer(headers=[*ETAGGED, (b"content-type", b"text/plain")])
    await client.get()
    response = await client.get(headers=[(b"if-none-match", b'"v1"')])
    assert response.status == 304
    assert response.body == b""
    assert response.header("etag") == '"v1"'
    assert response.header("content-type") is None
    changed = await client.get(headers=[(b"if-none-match", b'"v0"')])
    assert changed.status == 200
    assert client.origin.calls == 1


async def test_if_modified_since_on_a_hit(client: Client) -> None:
    client.origin.answer(headers=[*MAX_AGE, (b"last-modified", b"Fri, 15 Jan 2027 08:00:00 GMT")])
    await client.get()
    same = await client.get(headers=[(b"if-modified-since", b"Fri, 15 Jan 2027 08:00:00 GMT")])
    older = await client.get(headers=[(b"if-modified-since", b"Thu, 14 Jan 2027 08:00:00 GMT")])
    assert same.status == 304
    assert older.status == 200


async def test_a_conditional_miss_stores_the_whole_response_and_answers_304(client: Client) -> None:
    client.origin.answer(headers=ETAGGED, body=b"full")
    response = await client.get(headers=[(b"if-none-match", b'"v1"')])
    assert response.status == 304
    assert b"if-none-match" not in client.origin.request_headers()
    full = await client.get()
    assert (full.status, full.body, full.x_cache) == (200, b"full", "HIT")


async def test_a_stale_entry_is_revalidated_and_a_304_freshens_it(
    client: Client, clock: Clock
) -> None:
    client.origin.answer(headers=ETAGGED, body=b"v1 body")
    await client.get()
    clock.advance(61)
    client.origin.answer(
        304, headers=[(b"cache-control", b"max-age=120"), (b"etag", b'"v1"')], body=b""
    )
    revalidated = await client.get()
    assert client.origin.request_headers()[b"if-none-match"] == b'"v1"'
    assert (revalidated.status, revalidated.body) == (200, b"v1 body")
    assert revalidated.header("cache-control") == "max-age=120"
    clock.advance(100)
    assert (await client.get()).x_cache == "HIT"
    assert client.origin.calls == 2


async def test_revalidation_with_last_modified(client: Client, clock: Clock) -> None:
    modified = b"Fri, 15 Jan 2027 08:00:00 GMT"
    client.origin.answer(headers=[(b"cache-control", b"no-cache"), (b"last-modified", modified)])
    await client.get()
    client.origin.answer(304, headers=[], body=b"")
    response = await client.get()
    assert client.origin.request_headers()[b"if-modified-since"] == modified
    assert (response.status, response.body) == (200, b"body")


async def test_a_changed_resource_replaces_the_stale_entry(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=ETAGGED, body=b"old")
    await client.get()
    clock.advance(61)
    client.origin.answer(headers=[*MAX_AGE, (b"etag", b'"v2"')], body=b"new")
    assert (await client.get()).body == b"new"
    assert (await client.get()).body == b"new"
    assert client.origin.calls == 2


async def test_request_no_cache_forces_revalidation(client: Client) -> None:
    client.origin.answer(headers=ETAGGED)
    await client.get()
    await client.get(headers=[(b"cache-control", b"no-cache")])
    assert client.origin.calls == 2
    assert client.origin.request_headers()[b"if-none-match"] == b'"v1"'


async def test_request_directives_can_be_ignored(make_client: ClientFactory) -> None:
    client = make_client(honour_request_directives=False)
    client.origin.answer(headers=MAX_AGE)
    await client.get()
    await client.get(headers=[(b"cache-control", b"no-cache, max-age=0")])
    assert client.origin.calls == 1


async def test_only_if_cached_miss_is_a_504_problem(client: Client) -> None:
    response = await client.get(headers=[(b"cache-control", b"only-if-cached")])
    assert_problem_body(response.body, 504, "not_in_cache")
    assert client.origin.calls == 0


# --- stale responses


async def test_stale_while_revalidate_serves_stale_and_refreshes(
    client: Client, clock: Clock
) -> None:
    client.origin.answer(
        headers=[(b"cache-control", b"max-age=10, stale-while-revalidate=30")], body=b"v1"
    )
    await client.get()
    clock.advance(15)
    client.origin.answer(headers=[(b"cache-control", b"max-age=10")], body=b"v2")
    stale = await client.get()
    assert (stale.x_cache, stale.body) == ("STALE", b"v1")
    for _ in range(5):
        await asyncio.sleep(0)
    assert client.origin.calls == 2
    fresh = await client.get()
    assert (fresh.x_cache, fresh.body) == ("HIT", b"v2")


async def test_stale_if_error_on_a_5xx_and_on_a_failure(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=[(b"cache-control", b"max-age=10, stale-if-error=60")], body=b"ok")
    await client.get()
    clock.advance(20)
    client.origin.answer(503, body=b"down")
    on_5xx = await client.get()
    assert (on_5xx.status, on_5xx.body, on_5xx.x_cache) == (200, b"ok", "STALE")
    client.origin.answer(error=ConnectionError("refused"))
    on_failure = await client.get()
    assert (on_failure.status, on_failure.body) == (200, b"ok")
    clock.advance(60)
    client.origin.answer(503, body=b"down")
    assert (await client.get()).status == 503


async def test_must_revalidate_is_never_served_stale(client: Client, clock: Clock) -> None:
    client.origin.answer(
        headers=[
            (
                b"cache-control",
                b"max-age=10, must-revalidate, stale-if-error=60, stale-while-revalidate=60",
            )
        ]
    )
    await client.get()
    clock.advance(20)
    client.origin.answer(503, body=b"down")
    response = await client.get()
    assert (response.status, response.body) == (503, b"down")


async def test_request_max_stale(client: Client, clock: Clock) -> None:
    # Kept past its freshness for revalidation (it has a validator), so max-stale can reach it.
    client.origin.answer(headers=ETAGGED)
    await client.get()
    clock.advance(65)
    response = await client.get(headers=[(b"cache-control", b"max-stale=10")])
    assert response.x_cache == "STALE"
    assert client.origin.calls == 1
    clock.advance(10)
    # Past max-stale: asked of the terminal (the background revalidation the stale answer
    # started may not have run yet).
    late = await client.get(headers=[(b"cache-control", b"max-stale=10")])
    assert late.x_cache == "MISS"


# --- unsafe methods


@pytest.mark.parametrize(
    ("method", "status", "invalidated"),
    [
        ("POST", 201, True),
        ("PUT", 204, True),
        ("DELETE", 200, True),
        ("PATCH", 303, True),
        ("POST", 400, False),
        ("POST", 500, False),
        ("OPTIONS", 200, False),
    ],
)
async def test_unsafe_methods_invalidate_on_success(
    client: Client, method: str, status: int, invalidated: bool
) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get("/items", query=b"page=2")
    await client.get("/items")
    client.origin.answer(status)
    await client.request(method, "/items")
    client.origin.answer(headers=MAX_AGE)
    assert ((await client.get("/items", query=b"page=2")).x_cache == "MISS") is invalidated
    assert ((await client.get("/items")).x_cache == "MISS") is invalidated


@pytest.mark.parametrize(
    ("location", "invalidated"),
    [
        (b"/items/7", True),
        (b"7", True),
        (b"http://api.test/items/7", True),
        (b"http://elsewhere.test/items/7", False),
    ],
)
async def test_location_and_content_location_are_invalidated_same_origin_only(
    client: Client, location: bytes, invalidated: bool
) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get("/items/7")
    client.origin.answer(201, headers=[(b"location", location)])
    await client.request("POST", "/items/")
    client.origin.answer(headers=MAX_AGE)
    assert ((await client.get("/items/7")).x_cache == "MISS") is invalidated


async def test_content_location_is_invalidated(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get("/items/8")
    client.origin.answer(200, headers=[(b"content-location", b"/items/8")])
    await client.request("PUT", "/items/8/name")
    assert (await client.get("/items/8")).x_cache == "MISS"


# --- HEAD


async def test_head_is_answered_from_a_stored_get(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=b"twelve bytes")
    await client.get()
    head = await client.request("HEAD", "/r")
    assert (head.status, head.body, head.x_cache) == (200, b"", "HIT")
    assert head.header("content-length") == "12"
    assert client.origin.calls == 1


async def test_a_head_miss_goes_to_the_terminal_and_stores_nothing(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=b"")
    await client.request("HEAD", "/r")
    assert client.origin.seen[-1]["method"] == "HEAD"
    client.origin.answer(headers=MAX_AGE, body=b"full body")
    assert (await client.get()).body == b"full body"
    assert client.origin.calls == 2


# --- ranges

DIGITS = b"0123456789"


@pytest.mark.parametrize(
    ("range_header", "status", "body", "content_range"),
    [
        (b"bytes=0-3", 206, b"0123", "bytes 0-3/10"),
        (b"bytes=7-", 206, b"789", "bytes 7-9/10"),
        (b"bytes=-2", 206, b"89", "bytes 8-9/10"),
        (b"bytes=0-1,4-5", 200, DIGITS, None),
        (b"lines=1-2", 200, DIGITS, None),
    ],
)
async def test_a_range_is_served_from_a_stored_full_body(
    client: Client, range_header: bytes, status: int, body: bytes, content_range: str | None
) -> None:
    client.origin.answer(headers=[*ETAGGED], body=DIGITS)
    await client.get()
    response = await client.get(headers=[(b"range", range_header)])
    assert (response.status, response.body) == (status, body)
    assert response.header("content-range") == content_range
    assert response.header("content-length") == str(len(body))
    assert client.origin.calls == 1


async def test_an_unsatisfiable_range_is_a_416_problem(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=DIGITS)
    await client.get()
    response = await client.get(headers=[(b"range", b"bytes=50-")])
    assert_problem_body(response.body, 416, "range_not_satisfiable")
    assert response.header("content-range") == "bytes */10"


async def test_if_range_that_does_not_match_gets_the_whole_body(client: Client) -> None:
    client.origin.answer(headers=ETAGGED, body=DIGITS)
    await client.get()
    matching = await client.get(headers=[(b"range", b"bytes=0-1"), (b"if-range", b'"v1"')])
    stale = await client.get(headers=[(b"range", b"bytes=0-1"), (b"if-range", b'"v0"')])
    weak = await client.get(headers=[(b"range", b"bytes=0-1"), (b"if-range", b'W/"v1"')])
    assert matching.status == 206
    assert (stale.status, stale.body) == (200, DIGITS)
    assert weak.status == 200


async def test_a_partial_response_never_poisons_the_full_body(client: Client) -> None:
    client.origin.answer(206, headers=[*MAX_AGE, (b"content-range", b"bytes 0-3/10")], body=b"0123")
    partial = await client.get(headers=[(b"range", b"bytes=0-3")])
    assert partial.status == 206
    client.origin.answer(headers=MAX_AGE, body=DIGITS)
    full = await client.get()
    assert (full.status, full.body, full.x_cache) == (200, DIGITS, "MISS")
    assert client.origin.seen[0]["headers"][-1] == (b"range", b"bytes=0-3")


# --- sizes and streaming


async def test_a_body_over_the_limit_streams_through_and_is_not_stored(
    make_client: ClientFactory,
) -> None:
    client = make_client(max_object_size=10)
    client.origin.answer(headers=MAX_AGE, body=[b"0123456", b"789abc", b"def"])
    response = await client.get()
    assert response.body == b"0123456789abcdef"
    assert response.chunks == 3
    await client.get()
    assert client.origin.calls == 2


async def test_a_declared_length_over_the_limit_is_not_buffered(make_client: ClientFactory) -> None:
    client = make_client(max_object_size=4)
    client.origin.answer(headers=[*MAX_AGE, (b"content-length", b"10")], body=DIGITS)
    assert (await client.get()).body == DIGITS
    await client.get()
    assert client.origin.calls == 2


async def test_a_streamed_body_within_the_limit_is_stored_whole(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=[b"ab", b"cd", b""])
    await client.get()
    hit = await client.get()
    assert (hit.body, hit.header("content-length"), hit.chunks) == (b"abcd", "4", 1)


# --- coalescing


async def test_concurrent_misses_ask_the_terminal_once(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=b"shared", delay=0.05)
    responses = await asyncio.gather(*(client.get() for _ in range(8)))
    assert client.origin.calls == 1
    assert {r.body for r in responses} == {b"shared"}


async def test_a_coalesced_waiter_with_another_variant_asks_itself(client: Client) -> None:
    def script(scope: Scope) -> object:
        language = dict(scope["headers"]).get(b"accept-language", b"-")
        return client.origin.reply(
            headers=[*MAX_AGE, (b"vary", b"accept-language")], body=language, delay=0.05
        )

    client.origin.script = script  # type: ignore[assignment]
    en, fr = await asyncio.gather(
        client.get(headers=[(b"accept-language", b"en")]),
        client.get(headers=[(b"accept-language", b"fr")]),
    )
    assert (en.body, fr.body) == (b"en", b"fr")
    assert client.origin.calls == 2


async def test_coalesced_waiters_of_a_private_response_ask_themselves(client: Client) -> None:
    def script(scope: Scope) -> object:
        who = dict(scope["headers"]).get(b"authorization", b"anyone")
        return client.origin.reply(headers=MAX_AGE, body=who, delay=0.05)

    client.origin.script = script  # type: ignore[assignment]
    alice, bob = await asyncio.gather(
        client.get(headers=[(b"authorization", b"alice")]),
        client.get(headers=[(b"authorization", b"bob")]),
    )
    assert (alice.body, bob.body) == (b"alice", b"bob")


# --- keys, tags


async def test_query_options_of_the_key(make_client: ClientFactory) -> None:
    client = make_client(ignore_query_params=["utm_source"], sort_query=True)
    client.origin.answer(headers=MAX_AGE)
    await client.get(query=b"a=1&b=2")
    assert (await client.get(query=b"b=2&a=1&utm_source=x")).x_cache == "HIT"
    assert (await client.get(query=b"a=2&b=2")).x_cache == "MISS"


async def test_the_query_is_part_of_the_key_by_default(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get(query=b"a=1&b=2")
    assert (await client.get(query=b"b=2&a=1")).x_cache == "MISS"


async def test_no_path_spells_another_requests_key(client: Client) -> None:
    def script(scope: Scope) -> object:
        return client.origin.reply(headers=MAX_AGE, body=scope["path"].encode())

    client.origin.script = script  # type: ignore[assignment]
    await client.get("/a", query=b"x")
    forged = await client.get("/a?x|api.test|", query=b"")
    assert forged.body == b"/a?x|api.test|"


async def test_tag_headers_are_stripped_and_purge_by_tag(client: Client) -> None:
    client.origin.answer(
        headers=[*MAX_AGE, (b"cache-tag", b"product-1, catalog"), (b"surrogate-key", b"shelf-9")]
    )
    response = await client.get()
    assert response.header("cache-tag") is None
    assert response.header("surrogate-key") is None
    store = client.cache.namespace("http")
    assert await store.invalidate_tag(upstream_tag("shelf-9")) >= 1
    assert (await client.get()).x_cache == "MISS"
    await store.invalidate_tag(path_tag("/r"))
    assert (await client.get()).x_cache == "MISS"


async def test_purge_by_prefix_reaches_every_query_and_variant(client: Client) -> None:
    client.origin.answer(headers=[*MAX_AGE, (b"vary", b"accept")])
    await client.get("/api/a", query=b"x=1")
    await client.get("/api/b", headers=[(b"accept", b"text/html")])
    await client.get("/other")
    await client.cache.namespace("http").invalidate_prefix("/api/")
    assert (await client.get("/api/a", query=b"x=1")).x_cache == "MISS"
    assert (await client.get("/api/b", headers=[(b"accept", b"text/html")])).x_cache == "MISS"
    assert (await client.get("/other")).x_cache == "HIT"


async def test_requests_with_other_preconditions_bypass_the_cache(client: Client) -> None:
    client.origin.answer(headers=ETAGGED)
    await client.get()
    await client.get(headers=[(b"if-match", b'"v1"')])
    assert client.origin.calls == 2


async def test_metrics_count_hits_misses_and_stale(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=[(b"cache-control", b"max-age=1, stale-while-revalidate=60")])
    await twice(client)
    clock.advance(5)
    await client.get()
    for _ in range(5):
        await asyncio.sleep(0)
    exposition = client.deps.metrics.exposition().decode()
    assert 'bastion_cache_requests_total{cache="http",result="hit"} 1.0' in exposition
    assert 'bastion_cache_requests_total{cache="http",result="miss"} 1.0' in exposition
    assert 'bastion_cache_requests_total{cache="http",result="stale"} 1.0' in exposition


# --- later additions: tenant privacy, forgetting, request directives ----------------------------


async def test_a_private_response_is_not_shared_within_a_tenant(make_client: ClientFactory) -> None:
    client = make_client(routes=[{"paths": ["/org/**"], "key": "tenant"}])

    def script(scope: Scope) -> object:
        user = dict(scope["headers"]).get(b"x-test-user", b"-")
        return client.origin.reply(headers=[(b"cache-control", b"private, max-age=60")], body=user)

    client.origin.script = script  # type: ignore[assignment]
    u1 = [(b"x-test-user", b"u1"), (b"x-test-tenant", b"acme")]
    u2 = [(b"x-test-user", b"u2"), (b"x-test-tenant", b"acme")]
    assert (await client.get("/org/me", headers=u1)).body == b"u1"
    assert (await client.get("/org/me", headers=u2)).body == b"u2"


async def test_a_resource_turned_uncacheable_forgets_its_stale_entry(
    client: Client, clock: Clock
) -> None:
    client.origin.answer(headers=ETAGGED)
    await client.get()
    clock.advance(61)
    client.origin.answer(headers=[(b"cache-control", b"no-store")], body=b"secret now")
    assert (await client.get()).body == b"secret now"
    await client.get()
    assert b"if-none-match" not in client.origin.request_headers()
    assert client.origin.calls == 3


async def test_only_if_cached_with_a_stale_entry_is_a_504(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=ETAGGED)
    await client.get()
    clock.advance(61)
    response = await client.get(headers=[(b"cache-control", b"only-if-cached")])
    assert_problem_body(response.body, 504, "not_in_cache")
    assert client.origin.calls == 1


async def test_a_client_no_store_is_kept_when_directives_are_ignored(
    make_client: ClientFactory,
) -> None:
    client = make_client(honour_request_directives=False)
    client.origin.answer(headers=MAX_AGE)
    await client.get(headers=[(b"cache-control", b"no-store")])
    await client.get()
    assert client.origin.calls == 2


async def test_bastion_endpoints_are_never_cached(client: Client) -> None:
    client.origin.answer(headers=[(b"cache-control", b"public, max-age=60")])
    await twice(client, "/_bastion/auth/me")
    assert client.origin.calls == 2


# --- adversarial: a response meant for one client never reaches another --------------------------

ALICE = [(b"authorization", b"Bearer alice"), (b"x-test-user", b"alice")]
BOB = [(b"authorization", b"Bearer bob"), (b"x-test-user", b"bob")]
PER_USER = [{"paths": ["/me", "/me/**"], "key": "user"}]
PER_TENANT = [{"paths": ["/org/**"], "key": "tenant"}]

ADVERSARIAL = [
    # id, routes, victim path+headers, response headers, attacker path+headers
    ("authorization", [], ("/r", [(b"authorization", b"Bearer a")]), b"max-age=60", ("/r", [])),
    ("cookie", [], ("/r", [(b"cookie", b"sid=a")]), b"max-age=60", ("/r", [])),
    ("principal-only", [], ("/r", [(b"x-test-user", b"alice")]), b"max-age=60", ("/r", [])),
    ("private", [], ("/r", []), b"private, max-age=60", ("/r", [])),
    ("no-store", [], ("/r", ALICE), b"public, no-store", ("/r", BOB)),
    ("per-user-to-other-user", PER_USER, ("/me", ALICE), b"private, max-age=60", ("/me", BOB)),
    ("per-user-to-anonymous", PER_USER, ("/me", ALICE), b"private, max-age=60", ("/me", [])),
    ("per-user-other-spelling", PER_USER, ("/me", ALICE), b"private, max-age=60", ("/ME", BOB)),
    ("per-user-trailing-slash", PER_USER, ("/me", ALICE), b"private, max-age=60", ("/me/", [])),
    (
        "per-tenant-other-tenant",
        PER_TENANT,
        ("/org/x", [(b"x-test-user", b"a"), (b"x-test-tenant", b"t1")]),
        b"max-age=60",
        ("/org/x", [(b"x-test-user", b"b"), (b"x-test-tenant", b"t2")]),
    ),
    (
        "per-tenant-without-tenant",
        PER_TENANT,
        ("/org/x", [(b"x-test-user", b"a"), (b"x-test-tenant", b"t1")]),
        b"max-age=60",
        ("/org/x", [(b"x-test-user", b"b")]),
    ),
]


@pytest.mark.parametrize(
    ("routes", "victim", "cache_control", "attacker"),
    [row[1:] for row in ADVERSARIAL],
    ids=[row[0] for row in ADVERSARIAL],
)
async def test_never_one_clients_response_to_another(
    make_client: ClientFactory,
    routes: list[dict[str, object]],
    victim: tuple[str, list[Header]],
    cache_control: bytes,
    attacker: tuple[str, list[Header]],
) -> None:
    client = make_client(routes=routes)

    def script(scope: Scope) -> object:
        found = dict(scope["headers"])
        who = b"|".join(
            found.get(name, b"") for name in (b"authorization", b"cookie", b"x-test-user")
        )
        serial = str(client.origin.calls).encode()
        return client.origin.reply(
            headers=[(b"cache-control", cache_control)], body=b"#" + serial + b" for:" + who
        )

    client.origin.script = script  # type: ignore[assignment]
    meant = await client.get(victim[0], headers=victim[1])
    got = await client.get(attacker[0], headers=attacker[1])
    assert got.body != meant.body
    assert client.origin.calls == 2
    assert got.x_cache == "MISS"


@pytest.mark.parametrize(
    ("vary", "victim", "attacker", "shared"),
    [
        # The identity comes from the verified principal, never from what the client sent.
        (b"X-Bastion-User", [(b"x-test-user", b"alice")], [(b"x-test-user", b"bob")], False),
        (b"X_Bastion_User", [(b"x-test-user", b"alice")], [(b"x-test-user", b"bob")], False),
        (b"X-Bastion-User", [(b"x-test-user", b"alice")], [], False),
        (
            b"X-Bastion-User",
            [(b"x-test-user", b"alice")],
            [(b"x-bastion-user", b"alice")],
            False,
        ),
        (b"X-Bastion-User", [(b"x-test-user", b"alice")], [(b"x-test-user", b"alice")], True),
        (b"X-Bastion-Roles", [(b"x-test-user", b"alice")], [(b"x-test-user", b"bob")], True),
        # The forwarding fields are the gateway's statement of the client address, and a
        # client's own ones count too (a wrapped application reads them as sent).
        (b"X-Forwarded-For", [], [(b"x-forwarded-for", b"203.0.113.9")], False),
        (b"X-Forwarded-For", [], [], True),
        (b"X-Forwarded-Host", [], [(b"x-forwarded-host", b"evil.example")], False),
        (b"X-Real-IP", [], [(b"x-real-ip", b"203.0.113.9")], False),
    ],
    ids=[
        "user",
        "user-underscore",
        "user-anonymous",
        "user-forged",
        "same-user",
        "roles",
        "xff-sent",
        "xff-same-client",
        "xfh-sent",
        "x-real-ip-sent",
    ],
)
async def test_vary_on_fields_the_gateway_states(
    client: Client,
    vary: bytes,
    victim: list[Header],
    attacker: list[Header],
    shared: bool,
) -> None:
    def script(scope: Scope) -> object:
        serial = str(client.origin.calls).encode()
        return client.origin.reply(
            headers=[(b"cache-control", b"public, max-age=60"), (b"vary", vary)], body=serial
        )

    client.origin.script = script  # type: ignore[assignment]
    meant = await client.get(headers=victim)
    got = await client.get(headers=attacker)
    assert (got.body == meant.body) is shared


async def test_paths_spelt_differently_are_different_entries(client: Client) -> None:
    def script(scope: Scope) -> object:
        return client.origin.reply(headers=MAX_AGE, body=scope["raw_path"])

    client.origin.script = script  # type: ignore[assignment]
    poisoned = await client.get("/a/b", raw_path=b"/a%2Fb")
    plain = await client.get("/a/b")
    assert poisoned.body == b"/a%2Fb"
    assert plain.body == b"/a/b"
    assert plain.x_cache == "MISS"
    assert (await client.get("/a/b")).x_cache == "HIT"
    await client.request("POST", "/a/b")
    assert (await client.get("/a/b", raw_path=b"/a%2Fb")).x_cache == "MISS"


async def test_a_stale_head_revalidates_with_a_get(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=[(b"cache-control", b"max-age=10, stale-while-revalidate=60")])
    await client.get()
    clock.advance(20)
    head = await client.request("HEAD", "/r", headers=[(b"range", b"bytes=0-1")])
    assert (head.status, head.x_cache, head.body) == (206, "STALE", b"")
    for _ in range(5):
        await asyncio.sleep(0)
    assert client.origin.seen[-1]["method"] == "GET"
    assert b"range" not in client.origin.request_headers()


async def test_a_coalesced_waiter_gets_its_own_304(client: Client) -> None:
    client.origin.answer(headers=ETAGGED, body=b"full", delay=0.05)
    plain, conditional = await asyncio.gather(
        client.get(), client.get(headers=[(b"if-none-match", b'"v1"')])
    )
    assert (plain.status, plain.body) == (200, b"full")
    assert (conditional.status, conditional.body) == (304, b"")
    assert client.origin.calls == 1


@pytest.mark.parametrize(
    "extra",
    [
        [(b"set-cookie", b"sid=for-this-client")],
        [(b"cache-control", b"no-store")],
        [(b"cache-control", b"private, max-age=60")],
    ],
    ids=["set-cookie", "no-store", "private"],
)
async def test_a_304_that_makes_the_response_unstorable(
    client: Client, clock: Clock, extra: list[Header]
) -> None:
    client.origin.answer(headers=ETAGGED, body=b"v1")
    await client.get()
    clock.advance(61)
    client.origin.answer(304, headers=[(b"etag", b'"v1"'), *extra], body=b"")
    mine = await client.get()
    assert mine.body == b"v1"
    for name, value in extra:
        assert (name, value) in mine.headers
    client.origin.answer(headers=MAX_AGE, body=b"fresh")
    other = await client.get()
    assert other.body == b"fresh"
    assert other.header("set-cookie") is None
    assert b"if-none-match" not in client.origin.request_headers()


async def test_a_304_made_on_a_miss_keeps_the_clients_cookie(client: Client) -> None:
    client.origin.answer(headers=[*ETAGGED, (b"set-cookie", b"sid=1")], body=b"full")
    response = await client.get(headers=[(b"if-none-match", b'"v1"')])
    assert response.status == 304
    assert response.header("set-cookie") == "sid=1"


async def test_must_understand_overrides_no_store_for_a_known_status(client: Client) -> None:
    client.origin.answer(headers=[(b"cache-control", b"must-understand, no-store, max-age=60")])
    await twice(client)
    assert client.origin.calls == 1


async def test_waiters_are_released_once_nothing_will_be_stored(client: Client) -> None:
    """The first response is private and its body waits until a second request reaches the
    terminal: that can only happen if the waiting request was released at the response start."""
    second_arrived = asyncio.Event()

    async def origin(scope: Scope, receive: object, send: Callable[..., object]) -> None:
        client.origin.seen.append(scope)
        first = len(client.origin.seen) == 1
        if not first:
            second_arrived.set()
        await send(  # type: ignore[misc]
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"cache-control", b"private, max-age=60")],
            }
        )
        if first:
            await second_arrived.wait()
        await send({"type": "http.response.body", "body": b"mine"})  # type: ignore[misc]

    client.app = around(
        lambda a, d: http_cache_stage(a, d, client.cache.namespace("http")), origin, client.deps
    )
    first, second = await asyncio.wait_for(asyncio.gather(client.get(), client.get()), 10)
    assert (first.body, second.body) == (b"mine", b"mine")
    assert client.origin.calls == 2

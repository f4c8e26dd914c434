"""The HTTP cache stage under attack: what one client's request leaves in the cache never reaches
another client it was not meant for (coalesced waiters, path spellings, unkeyed inputs, variants),
a slow client never holds others, bad input never turns into a 500, and no client can evict a
shared entry by asking differently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bastion.cache.http.config import HttpCacheRouteConfig
from bastion.cache.http.keys import KeyBuilder
from bastion.cache.http.wiring import http_cache_stage
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.state import state_of
from stage_harness import around

from .conftest import Client, ClientFactory, Clock, Header, PrincipalFromHeader

MAX_AGE = [(b"cache-control", b"max-age=60")]
ETAGGED = [(b"cache-control", b"max-age=60"), (b"etag", b'"v1"')]
HANG_GUARD = 10.0
"""Seconds after which a test that would otherwise hang fails (never a timing threshold)."""


def who(scope: Scope, name: bytes = b"authorization") -> bytes:
    return dict(scope["headers"]).get(name, b"anonymous")


def echo(client: Client, headers: list[Header], name: bytes, *, delay: float = 0.0) -> None:
    """The origin answers ``headers`` and a body naming the request's ``name`` field."""

    def script(scope: Scope) -> Any:
        return client.origin.reply(200, headers, b"for " + who(scope, name), delay=delay)

    client.origin.script = script


class ForwardedFrom:
    """Sets what a trusted proxy said (``x-test-forwarded-host``, ``x-test-scheme``) on the
    request state, as the client-IP stage does for a trusted peer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = dict(scope["headers"])
        state = state_of(scope)
        if b"x-test-forwarded-host" in found:
            state.forwarded_host = found[b"x-test-forwarded-host"].decode()
        if b"x-test-scheme" in found:
            state.scheme = found[b"x-test-scheme"].decode()
        await self.app(scope, receive, send)


def behind_proxy(client: Client) -> None:
    store = client.cache.namespace("http")
    client.app = around(
        lambda inner, deps: ForwardedFrom(
            PrincipalFromHeader(http_cache_stage(inner, deps, store))
        ),
        client.origin,
        client.deps,
    )


# --- 1. coalesced waiters get only what is fresh for their own request ---------------------------

ALICE = [(b"authorization", b"Bearer alice")]
BOB = [(b"authorization", b"Bearer bob")]

WAITERS = [
    # id, response Cache-Control, first request, waiting request, waiter answered by the first
    ("must-revalidate-max-age-0", b"max-age=0, must-revalidate", ALICE, BOB, False),
    ("no-cache", b"public, no-cache", ALICE, BOB, False),
    ("s-maxage-0", b"s-maxage=0", ALICE, BOB, False),
    ("s-maxage-for-credentials", b"s-maxage=60", ALICE, BOB, False),
    ("must-revalidate-fresh-for-credentials", b"max-age=60, must-revalidate", ALICE, BOB, False),
    ("public-for-credentials", b"public, max-age=60", ALICE, BOB, True),
    ("no-cache-anonymous", b"public, no-cache", [], [], False),
    ("max-age-0-anonymous", b"max-age=0", [], [], False),
    ("waiter-no-cache", b"max-age=60", [], [(b"cache-control", b"no-cache")], False),
    ("waiter-max-age-0", b"max-age=60", [], [(b"cache-control", b"max-age=0")], False),
    ("waiter-min-fresh", b"max-age=60", [], [(b"cache-control", b"min-fresh=120")], False),
    ("fresh-anonymous", b"max-age=60", [], [], True),
]


@pytest.mark.parametrize(
    ("cache_control", "first", "waiter", "coalesced"),
    [row[1:] for row in WAITERS],
    ids=[row[0] for row in WAITERS],
)
async def test_a_waiter_is_answered_only_by_what_is_fresh_for_it(
    client: Client,
    cache_control: bytes,
    first: list[Header],
    waiter: list[Header],
    coalesced: bool,
) -> None:
    def script(scope: Scope) -> Any:
        serial = str(client.origin.calls).encode()
        headers = [(b"cache-control", cache_control), (b"etag", b'"' + serial + b'"')]
        return client.origin.reply(200, headers, b"#" + serial + b" " + who(scope), delay=0.05)

    client.origin.script = script
    mine, theirs = await asyncio.gather(
        client.get(headers=first), client.get(headers=[(b"x-order", b"2"), *waiter])
    )
    assert mine.body.endswith(b" " + dict(first).get(b"authorization", b"anonymous"))
    if coalesced:
        assert (theirs.body, client.origin.calls) == (mine.body, 1)
    else:
        assert theirs.body != mine.body
        assert client.origin.calls == 2


# --- 2. path spellings never loosen a route ------------------------------------------------------

ACCOUNT_OFF = [HttpCacheRouteConfig(paths=["/api/account/**"], enabled=False)]
ME_PER_USER = [HttpCacheRouteConfig(paths=["/api/me", "/api/me/**"], key="user")]
EXPLICIT_UNDER_OFF = [
    HttpCacheRouteConfig(paths=["/api/account/**"], enabled=False),
    HttpCacheRouteConfig(paths=["/api/**"], enabled=True),
]

SPELLINGS = [
    # id, routes, path the victim requests (as the client spells it, decoded)
    ("double-slash-inside", ACCOUNT_OFF, "/api//account/details"),
    ("double-slash-leading", ACCOUNT_OFF, "//api/account/details"),
    ("many-slashes", ACCOUNT_OFF, "/api///account//details"),
    ("path-parameter", ACCOUNT_OFF, "/api/account;x/details"),
    ("path-parameter-last", ACCOUNT_OFF, "/api/account/details;.css"),
    ("path-parameter-under-explicit", EXPLICIT_UNDER_OFF, "/api/account;x/details"),
    ("per-user-double-slash", ME_PER_USER, "//api/me"),
    ("per-user-path-parameter", ME_PER_USER, "/api/me;x"),
]


@pytest.mark.parametrize(
    ("routes", "path"), [row[1:] for row in SPELLINGS], ids=[row[0] for row in SPELLINGS]
)
async def test_another_spelling_never_caches_a_protected_path(
    make_client: ClientFactory, routes: list[HttpCacheRouteConfig], path: str
) -> None:
    client = make_client(routes=routes)
    echo(client, [(b"cache-control", b"public, s-maxage=300")], b"x-test-user")
    victim = await client.get(path, headers=[(b"x-test-user", b"alice")])
    attacker = await client.get(path, headers=[(b"x-test-user", b"bob")])
    assert victim.body == b"for alice"
    assert attacker.body == b"for bob"
    assert attacker.x_cache != "HIT"


async def test_a_path_parameter_is_cached_where_a_route_turns_caching_on(
    make_client: ClientFactory,
) -> None:
    client = make_client(
        enabled=False, routes=[HttpCacheRouteConfig(paths=["/static/**"], enabled=True)]
    )
    client.origin.answer(headers=MAX_AGE)
    await client.get("/static/app.js;v=2")
    assert (await client.get("/static/app.js;v=2")).x_cache == "HIT"
    section = make_client()
    section.origin.answer(headers=MAX_AGE)
    await section.get("/static/app.js;v=2")
    assert (await section.get("/static/app.js;v=2")).x_cache is None
    assert section.origin.calls == 2


# --- 3. the key holds the scheme and the public host ---------------------------------------------


async def test_the_scheme_is_part_of_the_key(client: Client) -> None:
    behind_proxy(client)

    def script(scope: Scope) -> Any:
        if state_of(scope).scheme == "http":
            return client.origin.reply(301, [(b"location", b"https://api.test/r"), *MAX_AGE])
        return client.origin.reply(200, MAX_AGE, b"content")

    client.origin.script = script
    assert (await client.get()).status == 301
    secure = await client.get(headers=[(b"x-test-scheme", b"https")])
    assert (secure.status, secure.body, secure.x_cache) == (200, b"content", "MISS")
    assert (await client.get()).x_cache == "HIT"


@pytest.mark.parametrize("vary", [[], [(b"vary", b"X-Forwarded-Host")]], ids=["key", "vary"])
async def test_the_public_host_a_trusted_proxy_states_is_part_of_the_key(
    client: Client, vary: list[Header]
) -> None:
    behind_proxy(client)

    def script(scope: Scope) -> Any:
        host = state_of(scope).forwarded_host or "internal"
        return client.origin.reply(200, [*MAX_AGE, *vary], f"link=https://{host}/x".encode())

    client.origin.script = script
    site_a = [(b"x-test-forwarded-host", b"a.example")]
    site_b = [(b"x-test-forwarded-host", b"b.example")]
    assert (await client.get(headers=site_a)).body == b"link=https://a.example/x"
    other = await client.get(headers=site_b)
    assert (other.body, other.x_cache) == (b"link=https://b.example/x", "MISS")
    assert (await client.get(headers=site_a)).x_cache == "HIT"


async def test_a_client_sent_forwarded_host_selects_its_own_variant(client: Client) -> None:
    echo(client, [*MAX_AGE, (b"vary", b"X-Forwarded-Host")], b"x-forwarded-host")
    await client.get(headers=[(b"x-forwarded-host", b"a.example")])
    other = await client.get(headers=[(b"x-forwarded-host", b"b.example")])
    assert (other.body, other.x_cache) == (b"for b.example", "MISS")


# --- 4. a slow client holds nobody ---------------------------------------------------------------


def raw_scope(path: str = "/r") -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"api.test")],
        "scheme": "http",
        "http_version": "1.1",
        "client": ("10.6.6.6", 1),
        "server": ("api.test", 80),
    }


async def test_a_client_that_stops_reading_does_not_hold_the_others(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=[b"x" * 1000, b"y" * 1000])
    reading = asyncio.Event()
    taken: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def slow_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            await reading.wait()
        taken.append(message)

    stalled = asyncio.create_task(client.app(raw_scope(), receive, slow_send))
    while client.origin.calls == 0:
        await asyncio.sleep(0)
    other = await asyncio.wait_for(client.get(), HANG_GUARD)
    assert other.body == b"x" * 1000 + b"y" * 1000
    assert client.origin.calls == 1
    reading.set()
    await asyncio.wait_for(stalled, HANG_GUARD)
    body = b"".join(m.get("body", b"") for m in taken if m["type"] == "http.response.body")
    assert body == b"x" * 1000 + b"y" * 1000


async def test_a_waiter_asks_the_terminal_itself_after_coalesce_wait(
    make_client: ClientFactory,
) -> None:
    client = make_client(coalesce_wait=0.01)
    second_arrived = asyncio.Event()

    async def origin(scope: Scope, receive: Receive, send: Send) -> None:
        client.origin.seen.append(scope)
        if len(client.origin.seen) == 1:
            await second_arrived.wait()
        else:
            second_arrived.set()
        await send({"type": "http.response.start", "status": 200, "headers": MAX_AGE})
        await send({"type": "http.response.body", "body": b"slow"})

    store = client.cache.namespace("http")
    client.app = around(lambda a, d: http_cache_stage(a, d, store), origin, client.deps)
    first, second = await asyncio.wait_for(asyncio.gather(client.get(), client.get()), HANG_GUARD)
    assert (first.body, second.body) == (b"slow", b"slow")
    assert client.origin.calls == 2


async def test_a_body_past_the_limit_goes_back_to_the_clients_pace(
    make_client: ClientFactory,
) -> None:
    client = make_client(max_object_size=3)
    client.origin.answer(headers=MAX_AGE, body=[b"ab", b"cd", b"ef"])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await client.app(raw_scope(), receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies == [b"ab", b"cd", b"ef"]


# --- 5. a Location that does not parse is no 500 -------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [b"http://[::1/items/8", b"http://[x]/a", b"//[::1", b"http://a:b:c/x"],
    ids=["unclosed-ipv6", "bad-ipv6", "scheme-relative", "bad-port"],
)
async def test_a_malformed_location_on_an_unsafe_request(client: Client, location: bytes) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get("/items")
    client.origin.answer(201, [(b"location", location)], b"created")
    created = await client.request("POST", "/items")
    assert (created.status, created.body) == (201, b"created")
    client.origin.answer(headers=MAX_AGE)
    assert (await client.get("/items")).x_cache == "MISS"


# --- 6. ignored and sorted parameters never cloak another ----------------------------------------

QUERIES = [
    # id, ignored, sort, query, other query, same key
    ("ignored-dropped", ["utm_source"], False, b"utm_source=x&callback=a", b"callback=a", True),
    ("semicolon-cloaks", ["utm_source"], False, b"utm_source=x;callback=evil", b"", False),
    ("semicolon-kept-whole", ["utm_source"], False, b"a=1;utm_source=x", b"a=1", False),
    ("encoded-name-kept", ["utm_source"], False, b"utm_%73ource=x&a=1", b"a=1", False),
    ("encoded-amp-is-value", ["utm_source"], False, b"utm_source=x%26cb%3Da&a=1", b"a=1", True),
    ("plus-not-decoded", [], True, b"q=a+b", b"q=a%20b", False),
    ("sorted", [], True, b"b=2&a=1", b"a=1&b=2", True),
    ("same-names-keep-order", [], True, b"a=2&a=1", b"a=1&a=2", False),
    ("sorted-stable", [], True, b"b=1&a=2&a=1", b"a=2&a=1&b=1", True),
    ("no-rewrite-without-options", [], False, b"b=2&a=1", b"a=1&b=2", False),
]


@pytest.mark.parametrize(
    ("ignored", "sort", "query", "other", "same"),
    [row[1:] for row in QUERIES],
    ids=[row[0] for row in QUERIES],
)
def test_query_keys(ignored: list[str], sort: bool, query: bytes, other: bytes, same: bool) -> None:
    keys = KeyBuilder(include_host=True, ignore_params=ignored, sort_query=sort)
    assert (keys.query(query) == keys.query(other)) is same


async def test_a_cloaked_parameter_does_not_poison_the_plain_url(
    make_client: ClientFactory,
) -> None:
    client = make_client(ignore_query_params=["utm_source"])

    def script(scope: Scope) -> Any:
        pairs = scope["query_string"].decode().replace(";", "&").split("&")
        found = dict(pair.partition("=")[::2] for pair in pairs if pair)
        return client.origin.reply(200, MAX_AGE, f"callback={found.get('callback')}".encode())

    client.origin.script = script
    await client.get("/js", query=b"utm_source=x;callback=alert(1)")
    plain = await client.get("/js")
    assert (plain.body, plain.x_cache) == (b"callback=None", "MISS")


# --- 7. inputs the key leaves out keep the request away from the cache ---------------------------

UNKEYED = [
    (b"x-http-method-override", b"DELETE"),
    (b"x-method-override", b"DELETE"),
    (b"x-http-method", b"DELETE"),
    (b"x_http_method_override", b"DELETE"),
    (b"x-original-url", b"/admin"),
    (b"x-rewrite-url", b"/admin"),
    (b"content-length", b"17"),
    (b"transfer-encoding", b"chunked"),
]


@pytest.mark.parametrize("header", UNKEYED, ids=[name.decode() for name, _ in UNKEYED])
async def test_an_unkeyed_input_neither_stores_nor_is_served(
    client: Client, header: Header
) -> None:
    def script(scope: Scope) -> Any:
        name = header[0]
        return client.origin.reply(200, MAX_AGE, b"saw " + dict(scope["headers"]).get(name, b"-"))

    client.origin.script = script
    assert (await client.get(headers=[header])).body == b"saw " + header[1]
    plain = await client.get()
    assert (plain.body, plain.x_cache) == (b"saw -", "MISS")
    assert (await client.get()).x_cache == "HIT"
    again = await client.get(headers=[header])
    assert again.body == b"saw " + header[1]
    assert client.origin.calls == 3


@pytest.mark.parametrize("length", [b"0", b" 0", b"00"])
async def test_an_empty_declared_body_is_still_cached(client: Client, length: bytes) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get(headers=[(b"content-length", length)])
    assert (await client.get(headers=[(b"content-length", length)])).x_cache == "HIT"


# --- 8. Accept-Encoding variants are merged only when certainly alike ----------------------------

ENCODINGS = [
    # id, first Accept-Encoding (None: absent), second, second is answered from the first's
    ("q0-vs-absent", b"gzip;q=0", None, False),
    ("empty-vs-absent", b"", None, False),
    ("q0-vs-empty", b"gzip;q=0", b"", False),
    ("preference-order", b"gzip;q=0.5, br", b"br;q=0.5, gzip", False),
    ("parameter", b"gzip;level=1", b"gzip", False),
    ("plain-reordered", b"gzip, br", b"br, gzip", True),
    ("plain-q1", b"gzip;q=1, br", b"br, gzip", True),
    ("absent-twice", None, None, True),
]


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [row[1:] for row in ENCODINGS],
    ids=[row[0] for row in ENCODINGS],
)
async def test_accept_encoding_variants(
    client: Client, first: bytes | None, second: bytes | None, shared: bool
) -> None:
    def script(scope: Scope) -> Any:
        # A naive upstream: compresses whenever "gzip" appears, whatever its q.
        value = dict(scope["headers"]).get(b"accept-encoding")
        encoded = value is not None and b"gzip" in value
        headers = [*MAX_AGE, (b"vary", b"Accept-Encoding")]
        if encoded:
            headers.append((b"content-encoding", b"gzip"))
        return client.origin.reply(200, headers, b"gzip" if encoded else b"identity")

    client.origin.script = script

    def accept(value: bytes | None) -> list[Header]:
        return [] if value is None else [(b"accept-encoding", value)]

    await client.get(headers=accept(first))
    answer = await client.get(headers=accept(second))
    assert (answer.x_cache == "HIT") is shared
    assert client.origin.calls == (1 if shared else 2)


# --- 9. only the response itself makes a stored entry go -----------------------------------------

KEPT = [
    # id, request headers of the revalidation, origin's answer to it
    ("credentials", [(b"authorization", b"Bearer mallory")], 200, MAX_AGE),
    ("request-no-store", [(b"cache-control", b"no-store")], 200, MAX_AGE),
    ("server-error", [], 503, [(b"cache-control", b"no-store")]),
    ("too-large", [], 200, [*MAX_AGE, (b"content-length", b"99999999")]),
]


@pytest.mark.parametrize(
    ("request_headers", "status", "response_headers"),
    [row[1:] for row in KEPT],
    ids=[row[0] for row in KEPT],
)
async def test_a_client_cannot_evict_a_stale_shared_entry(
    client: Client,
    clock: Clock,
    request_headers: list[Header],
    status: int,
    response_headers: list[Header],
) -> None:
    client.origin.answer(headers=ETAGGED, body=b"v1")
    await client.get()
    clock.advance(61)
    client.origin.answer(status, response_headers, b"other")
    await client.get(headers=request_headers)
    client.origin.answer(304, [(b"etag", b'"v1"'), *MAX_AGE], b"")
    revalidated = await client.get()
    assert client.origin.request_headers().get(b"if-none-match") == b'"v1"'
    assert (revalidated.status, revalidated.body) == (200, b"v1")


FORGOTTEN = [
    ("no-store", [(b"cache-control", b"no-store")]),
    ("private", [(b"cache-control", b"private, max-age=60")]),
    ("set-cookie", [*MAX_AGE, (b"set-cookie", b"sid=1")]),
    ("vary-star", [*MAX_AGE, (b"vary", b"*")]),
]


@pytest.mark.parametrize(
    "response_headers", [row[1] for row in FORGOTTEN], ids=[row[0] for row in FORGOTTEN]
)
async def test_a_response_that_forbids_storing_forgets_the_entry(
    client: Client, clock: Clock, response_headers: list[Header]
) -> None:
    client.origin.answer(headers=ETAGGED, body=b"v1")
    await client.get()
    clock.advance(61)
    client.origin.answer(200, response_headers, b"now")
    await client.get()
    client.origin.answer(headers=MAX_AGE, body=b"fresh")
    assert (await client.get()).body == b"fresh"
    assert b"if-none-match" not in client.origin.request_headers()


async def test_a_non_storable_status_forgets_the_entry(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=ETAGGED, body=b"v1")
    await client.get()
    clock.advance(61)
    client.origin.answer(302, [(b"location", b"/elsewhere")], b"")
    await client.get()
    client.origin.answer(headers=MAX_AGE, body=b"fresh")
    await client.get()
    assert b"if-none-match" not in client.origin.request_headers()


# --- minor: tenants ------------------------------------------------------------------------------


async def test_an_empty_tenant_is_no_tenant(make_client: ClientFactory) -> None:
    client = make_client(routes=[HttpCacheRouteConfig(paths=["/org/**"], key="tenant")])
    echo(client, MAX_AGE, b"x-test-user")
    first = [(b"x-test-user", b"alice"), (b"x-test-tenant", b"")]
    second = [(b"x-test-user", b"bob"), (b"x-test-tenant", b"")]
    await client.get("/org/x", headers=first)
    other = await client.get("/org/x", headers=second)
    assert (other.body, other.x_cache) == (b"for bob", "MISS")


# --- minor: invalidation in flight, 304s that change Vary, the variant index ---------------------


async def test_a_response_fetched_before_an_invalidation_is_not_stored_after_it(
    client: Client,
) -> None:
    written = asyncio.Event()

    async def origin(scope: Scope, receive: Receive, send: Send) -> None:
        client.origin.seen.append(scope)
        body = b"old"
        if scope["method"] == "GET" and len(client.origin.seen) == 1:
            await written.wait()
        elif scope["method"] != "GET":
            body = b"written"
        else:
            body = b"new"
        await send({"type": "http.response.start", "status": 200, "headers": MAX_AGE})
        await send({"type": "http.response.body", "body": body})

    store = client.cache.namespace("http")
    client.app = around(lambda a, d: http_cache_stage(a, d, store), origin, client.deps)
    before = asyncio.create_task(client.get())
    while not client.origin.seen:
        await asyncio.sleep(0)
    assert (await client.request("PUT", "/r")).body == b"written"
    written.set()
    assert (await asyncio.wait_for(before, HANG_GUARD)).body == b"old"
    after = await client.get()
    assert (after.body, after.x_cache) == (b"new", "MISS")


async def test_a_304_that_changes_vary_updates_the_variant(client: Client, clock: Clock) -> None:
    client.origin.answer(headers=[*ETAGGED, (b"vary", b"Accept-Language")], body=b"v1")
    english = [(b"accept-language", b"en"), (b"x-edition", b"1")]
    await client.get(headers=english)
    clock.advance(61)
    client.origin.answer(304, [*ETAGGED, (b"vary", b"X-Edition")], b"")
    assert (await client.get(headers=english)).body == b"v1"
    french = await client.get(headers=[(b"accept-language", b"fr"), (b"x-edition", b"1")])
    assert (french.body, french.x_cache) == (b"v1", "HIT")
    client.origin.answer(headers=[*MAX_AGE, (b"vary", b"X-Edition")], body=b"v2")
    other = await client.get(headers=[(b"accept-language", b"en"), (b"x-edition", b"2")])
    assert (other.body, other.x_cache) == (b"v2", "MISS")


async def test_the_variant_index_outlives_a_shorter_variant(client: Client, clock: Clock) -> None:
    def script(scope: Scope) -> Any:
        language = dict(scope["headers"]).get(b"accept-language", b"")
        lifetime = b"600" if language == b"en" else b"10"
        headers = [(b"cache-control", b"max-age=" + lifetime), (b"vary", b"Accept-Language")]
        return client.origin.reply(200, headers, language)

    client.origin.script = script
    await client.get(headers=[(b"accept-language", b"en")])
    await client.get(headers=[(b"accept-language", b"fr")])
    clock.advance(30)
    english = await client.get(headers=[(b"accept-language", b"en")])
    assert (english.body, english.x_cache) == (b"en", "HIT")


async def test_a_client_gone_mid_body_still_leaves_the_complete_response(client: Client) -> None:
    client.origin.answer(headers=MAX_AGE, body=[b"ab", b"cd"])

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def gone(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    await client.app(raw_scope(), receive, gone)  # logged by the error stage, after the start
    hit = await client.get()
    assert (hit.body, hit.x_cache, client.origin.calls) == (b"abcd", "HIT", 1)


async def test_a_terminal_failing_mid_body_stores_nothing(client: Client) -> None:
    async def origin(scope: Scope, receive: Receive, send: Send) -> None:
        client.origin.seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": MAX_AGE})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        if len(client.origin.seen) == 1:
            raise RuntimeError("upstream went away")
        await send({"type": "http.response.body", "body": b"cd"})

    store = client.cache.namespace("http")
    client.app = around(lambda a, d: http_cache_stage(a, d, store), origin, client.deps)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await client.app(raw_scope(), receive, send)  # logged by the error stage, after the start
    assert sent[0]["status"] == 200
    assert all(m.get("more_body") for m in sent[1:])  # never told the body is complete
    whole = await client.get()
    assert (whole.body, whole.x_cache, client.origin.calls) == (b"abcd", "MISS", 2)


@pytest.mark.parametrize(
    ("read", "written"),
    [("/api//items", "/api/items"), ("/api/items", "/api//items"), ("//api/items", "/api/items")],
    ids=["read-doubled", "written-doubled", "read-leading"],
)
async def test_an_unsafe_request_invalidates_every_slash_spelling(
    client: Client, read: str, written: str
) -> None:
    client.origin.answer(headers=MAX_AGE)
    await client.get(read)
    assert (await client.get(read)).x_cache == "HIT"
    await client.request("POST", written)
    assert (await client.get(read)).x_cache == "MISS"

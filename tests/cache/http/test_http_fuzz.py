"""Whatever a client sends in the headers the cache reads, the stage answers with a response,
never an exception: a problem (416, 504) where the input asks for one."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.cache.config import CacheConfig
from bastion.cache.http.config import HttpCacheConfig
from bastion.cache.http.wiring import NAMESPACE, http_cache_stage
from bastion.cache.tiered import Cache
from bastion.settings import Settings
from stage_harness import around, make_deps

from .conftest import Client, Origin

READ_HEADERS = [
    b"cache-control",
    b"range",
    b"if-range",
    b"if-none-match",
    b"if-modified-since",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"x-bastion-user",
]
VALUES = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"bytes=0-3",
            b"bytes=-5",
            b"bytes=99999999999999999999-",
            b"max-age=0, max-stale",
            b"only-if-cached",
            b"no-cache",
            b'"v1"',
            b"*",
            b"Fri, 15 Jan 2027 08:00:00 GMT",
        ]
    ),
)
REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["GET", "HEAD", "POST"]),
        st.lists(st.tuples(st.sampled_from(READ_HEADERS), VALUES), max_size=4),
    ),
    min_size=1,
    max_size=4,
)


async def _exchange(requests: list[tuple[str, list[tuple[bytes, bytes]]]]) -> list[int]:
    settings = Settings(cache=CacheConfig(http=HttpCacheConfig(enabled=True)))
    deps = make_deps(settings)
    cache = Cache(CacheConfig())
    origin = Origin()
    origin.answer(
        headers=[
            (b"cache-control", b"max-age=60"),
            (b"etag", b'"v1"'),
            (b"vary", b"Accept-Language, X-Bastion-User"),
        ],
        body=b"0123456789",
    )
    store = cache.namespace(NAMESPACE)
    client = Client(
        around(lambda a, d: http_cache_stage(a, d, store), origin, deps), origin, cache, deps
    )
    return [
        (await client.request(method, "/r", headers=headers)).status for method, headers in requests
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUESTS)
def test_any_request_headers_get_an_answer(
    requests: list[tuple[str, list[tuple[bytes, bytes]]]],
) -> None:
    statuses = asyncio.run(_exchange(requests))
    assert all(status in (200, 206, 304, 416, 504) for status in statuses), statuses


RESPONSE_HEADERS = [
    b"cache-control",
    b"expires",
    b"date",
    b"age",
    b"vary",
    b"etag",
    b"last-modified",
    b"cache-tag",
    b"content-range",
]


async def _twice(headers: list[tuple[bytes, bytes]], status: int) -> list[int]:
    settings = Settings(cache=CacheConfig(http=HttpCacheConfig(enabled=True)))
    deps = make_deps(settings)
    cache = Cache(CacheConfig())
    origin = Origin()
    origin.answer(status, headers=headers, body=b"body")
    store = cache.namespace(NAMESPACE)
    app = around(lambda a, d: http_cache_stage(a, d, store), origin, deps)
    client = Client(app, origin, cache, deps)
    conditional = [(b"if-none-match", b'"x"'), (b"range", b"bytes=1-2")]
    return [(await client.get()).status, (await client.get(headers=conditional)).status]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(RESPONSE_HEADERS), VALUES), max_size=5),
    st.sampled_from([200, 203, 204, 301, 404, 500]),
)
def test_any_response_headers_are_stored_or_passed_on(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    first, second = asyncio.run(_twice(headers, status))
    assert first == status
    assert second in (status, 206, 304, 416)

"""Compression stage: negotiation, skip rules, streaming, header rewriting, round trips."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.routes import RouteTable
from bastion.observe.metrics import Metrics
from bastion.pipeline.compression import CompressionStage, negotiate
from bastion.pipeline.config import CompressionConfig
from bastion.settings import Settings

Headers = list[tuple[bytes, bytes]]

TEXT = b"".join(b'{"id": %d, "name": "item number %d"},' % (i, i) for i in range(200))
ALL = ("zstd", "br", "gzip")
JSON = [(b"content-type", b"application/json")]


def make_stage(app: ASGIApp, **config: Any) -> CompressionStage:
    deps = Deps(settings=Settings(), metrics=Metrics(), routes=RouteTable([]), prefix="/_bastion")
    return CompressionStage(app, config=CompressionConfig(**config), deps=deps)


def responder(chunks: list[bytes], headers: Headers | None = None, status: int = 200) -> ASGIApp:
    """A raw ASGI app sending ``headers`` and the body in ``chunks`` (one message each)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": list(JSON if headers is None else headers),
            }
        )
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


async def call(
    stage: ASGIApp, accept: str | None = "gzip, deflate, br, zstd", method: str = "GET"
) -> tuple[Message, list[bytes]]:
    """The start message and the body chunks a client would receive."""
    headers = [] if accept is None else [(b"accept-encoding", accept.encode())]
    scope: Scope = {"type": "http", "method": method, "path": "/", "headers": headers, "state": {}}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await stage(scope, receive, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert not bodies[-1].get("more_body", False)
    return start, [m.get("body", b"") for m in bodies]


def header(message: Message, name: bytes) -> bytes | None:
    values = [v for k, v in message["headers"] if k == name]
    assert len(values) <= 1, f"{name!r} appears {len(values)} times"
    return values[0] if values else None


def decompress(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return bytes(zstandard.ZstdDecompressor().decompress(data))


def chunk_decoder(coding: str) -> Callable[[bytes], bytes]:
    """Feeds one chunk to a streaming decompressor and returns what it yields at once."""
    if coding == "gzip":
        return zlib.decompressobj(31).decompress
    if coding == "br":
        decoder = brotli.Decompressor()
        return lambda data: bytes(decoder.process(data))
    return zstandard.ZstdDecompressor().decompressobj().decompress


NEGOTIATION = [
    ("preference order on ties", "gzip, br, zstd", "zstd"),
    ("single coding", "gzip", "gzip"),
    ("x-gzip alias", "x-gzip", "gzip"),
    ("highest q wins", "gzip;q=0.8, br", "br"),
    ("explicit q beats order", "zstd;q=0.5, gzip;q=0.9", "gzip"),
    ("q=0 excludes", "br;q=0, gzip", "gzip"),
    ("all excluded", "br;q=0, gzip;q=0, zstd;q=0", None),
    ("star covers unlisted", "*;q=0.5", "zstd"),
    ("star does not revive q=0", "*;q=0.5, zstd;q=0, br;q=0", "gzip"),
    ("listed beats star", "*;q=0.5, gzip;q=0.6", "gzip"),
    ("star excluded", "*;q=0", None),
    ("identity only", "identity", None),
    ("identity;q=0 with nothing acceptable", "identity;q=0", None),
    ("identity;q=0 with gzip", "identity;q=0, gzip", "gzip"),
    ("uppercase", "GZIP;Q=1, BR;Q=0.1", "gzip"),
    ("spaces", "  br ; q = 0.7 ,gzip ;q=0.4 ", "br"),
    ("invalid q ignored", "br;q=abc, gzip", "gzip"),
    ("q above one ignored", "br;q=2, gzip;q=0.1", "gzip"),
    ("too many decimals ignored", "br;q=0.0001, gzip;q=0.001", "gzip"),
    ("unknown coding", "deflate, compress", None),
    ("empty", "", None),
    ("other parameters", "gzip;level=9;q=0.3, br;q=0.2", "gzip"),
    ("first duplicate counts", "br;q=0, br", None),
]


@pytest.mark.parametrize(
    ("header_value", "expected"), [c[1:] for c in NEGOTIATION], ids=[c[0] for c in NEGOTIATION]
)
def test_negotiation(header_value: str, expected: str | None) -> None:
    assert negotiate(header_value, ALL) == expected


def test_negotiation_respects_configured_algorithms() -> None:
    assert negotiate("zstd, gzip", ("gzip",)) == "gzip"
    assert negotiate("zstd", ("br", "gzip")) is None


@pytest.mark.parametrize("coding", ALL)
async def test_each_algorithm_round_trips(coding: str) -> None:
    headers = [*JSON, (b"content-length", str(len(TEXT)).encode()), (b"etag", b'"v1"')]
    start, (body,) = await call(make_stage(responder([TEXT], headers)), coding)
    assert header(start, b"content-encoding") == coding.encode()
    assert header(start, b"content-length") == str(len(body)).encode()
    assert header(start, b"vary") == b"Accept-Encoding"
    assert header(start, b"etag") == b'W/"v1"'
    assert len(body) < len(TEXT)
    assert decompress(coding, body) == TEXT


@pytest.mark.parametrize(
    ("etag", "expected"), [(b'"abc"', b'W/"abc"'), (b'W/"abc"', b'W/"abc"')], ids=["strong", "weak"]
)
async def test_etag_weakening(etag: bytes, expected: bytes) -> None:
    start, _ = await call(make_stage(responder([TEXT], [*JSON, (b"etag", etag)])), "gzip")
    assert header(start, b"etag") == expected


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (b"Origin", b"Origin, Accept-Encoding"),
        (b"accept-encoding", b"accept-encoding"),
        (b"*", b"*"),
    ],
)
async def test_vary_merge(existing: bytes, expected: bytes) -> None:
    start, _ = await call(make_stage(responder([TEXT], [*JSON, (b"vary", existing)])), "br")
    assert header(start, b"vary") == expected


UNTOUCHED = [
    (
        "small declared length",
        {"chunks": [b"{}"], "headers": [*JSON, (b"content-length", b"2")]},
        {},
        True,
    ),
    ("small single message", {"chunks": [TEXT[:1023]]}, {}, True),
    ("nothing acceptable", {"chunks": [TEXT]}, {"accept": "identity"}, True),
    ("image", {"chunks": [TEXT], "headers": [(b"content-type", b"image/png")]}, {}, False),
    ("font", {"chunks": [TEXT], "headers": [(b"content-type", b"Font/WOFF2")]}, {}, False),
    (
        "event stream",
        {"chunks": [TEXT], "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]},
        {},
        False,
    ),
    ("no content type", {"chunks": [TEXT], "headers": []}, {}, False),
    (
        "already encoded",
        {"chunks": [TEXT], "headers": [*JSON, (b"content-encoding", b"gzip")]},
        {},
        False,
    ),
    (
        "no-transform",
        {"chunks": [TEXT], "headers": [*JSON, (b"cache-control", b"public, No-Transform")]},
        {},
        False,
    ),
    ("partial content", {"chunks": [TEXT], "status": 206}, {}, False),
    ("not modified", {"chunks": [b""], "status": 304}, {}, False),
    ("no content", {"chunks": [b""], "status": 204}, {}, False),
    ("informational", {"chunks": [TEXT], "status": 103}, {}, False),
    ("HEAD", {"chunks": [b""]}, {"method": "HEAD"}, False),
    ("no Accept-Encoding", {"chunks": [TEXT]}, {"accept": None}, False),
]


@pytest.mark.parametrize(
    ("response", "request_args", "varies"),
    [c[1:] for c in UNTOUCHED],
    ids=[c[0] for c in UNTOUCHED],
)
async def test_untouched_responses(
    response: dict[str, Any], request_args: dict[str, Any], varies: bool
) -> None:
    app = responder(**response)
    start, bodies = await call(make_stage(app), **request_args)
    assert header(start, b"content-encoding") in (None, b"gzip")
    assert b"".join(bodies) == b"".join(response["chunks"])
    assert header(start, b"vary") == (b"Accept-Encoding" if varies else None)
    original = response.get("headers", JSON)
    assert [h for h in start["headers"] if h[0] != b"vary"] == original


async def test_min_size_is_configurable() -> None:
    start, (body,) = await call(make_stage(responder([b"x" * 100]), min_size=50), "gzip")
    assert header(start, b"content-encoding") == b"gzip"
    assert gzip.decompress(body) == b"x" * 100


async def test_declared_length_counts_even_when_sent_in_pieces() -> None:
    pieces = [TEXT[:10], TEXT[10:20], TEXT[20:]]
    headers = [*JSON, (b"content-length", str(len(TEXT)).encode())]
    start, bodies = await call(make_stage(responder(pieces, headers)), "gzip")
    assert header(start, b"content-length") is None
    assert gzip.decompress(b"".join(bodies)) == TEXT


@pytest.mark.parametrize("coding", ALL)
async def test_stream_chunks_decode_as_they_arrive(coding: str) -> None:
    events = [b"event %d: " % i + b"payload " * 20 + b"\n" for i in range(5)]
    start, bodies = await call(make_stage(responder([*events, b""])), coding)
    assert header(start, b"content-encoding") == coding.encode()
    assert header(start, b"content-length") is None
    feed = chunk_decoder(coding)
    for event, body in zip(events, bodies, strict=False):
        assert feed(body) == event  # each flushed chunk decodes fully before the stream ends
    assert b"".join(feed(b) for b in bodies[len(events) :]) == b""


async def test_empty_stream_messages_are_not_forwarded() -> None:
    start, bodies = await call(make_stage(responder([b"", b"a" * 10, b"", b"b" * 10])), "gzip")
    assert header(start, b"content-encoding") == b"gzip"
    assert len(bodies) == 2
    assert gzip.decompress(b"".join(bodies)) == b"a" * 10 + b"b" * 10


async def test_large_bodies_compress_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    offloaded: list[int] = []
    real = asyncio.to_thread

    async def to_thread(func: Callable[..., bytes], data: bytes) -> bytes:
        offloaded.append(len(data))
        return await real(func, data)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    for coding in ALL:
        _start, (body,) = await call(make_stage(responder([TEXT]), thread_min_size=4096), coding)
        assert decompress(coding, body) == TEXT
    _start, bodies = await call(make_stage(responder([TEXT, TEXT]), thread_min_size=4096), "zstd")
    assert offloaded == [len(TEXT)] * 5
    feed = chunk_decoder("zstd")
    assert b"".join(feed(b) for b in bodies) == TEXT + TEXT


async def test_other_messages_release_the_held_start() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(JSON)})
        await send({"type": "http.response.pathsend", "path": "/srv/file.json"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request"}

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"accept-encoding", b"br")],
    }
    await make_stage(app)(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert header(sent[0], b"content-encoding") is None
    assert header(sent[0], b"vary") == b"Accept-Encoding"


async def test_negotiation_cache_is_bounded() -> None:
    stage = make_stage(responder([b"{}"]))
    for index in range(600):
        await call(stage, f"gzip;q=0.{index % 1000:03d}, x-{index}")
    assert 0 < len(stage._negotiated) <= 256


async def test_content_type_cache_is_bounded() -> None:
    for index in range(300):
        stage_app = responder([TEXT], [(b"content-type", b"text/x-kind-%d" % index)])
        start, _ = await call(make_stage(stage_app), "gzip")
        assert header(start, b"content-encoding") == b"gzip"
    stage = make_stage(responder([TEXT]))
    for index in range(300):
        stage.app = responder([TEXT], [(b"content-type", b"text/x-kind-%d" % index)])
        await call(stage, "gzip")
    assert 0 < len(stage._types) <= 256


@pytest.mark.parametrize(
    "values",
    [
        {"algorithms": []},
        {"algorithms": ["gzip", "gzip"]},
        {"algorithms": ["deflate"]},
        {"excluded_types": ["image"]},
        {"excluded_types": ["*/*"]},
        {"gzip_level": 10},
    ],
    ids=["no algorithm", "duplicate", "unknown", "bare type", "everything", "level"],
)
def test_config_refuses(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CompressionConfig(**values)


def test_through_starlette() -> None:
    async def items(request: Request) -> JSONResponse:
        return JSONResponse([{"id": i, "name": f"item {i}"} for i in range(100)])

    app = make_stage(Starlette(routes=[Route("/items", items)]))
    with TestClient(app) as client:
        # The test client decodes gzip and br itself (zstd is covered by the raw ASGI tests).
        for coding in ("gzip", "br"):
            response = client.get("/items", headers={"Accept-Encoding": coding})
            assert response.headers["content-encoding"] == coding
            assert response.json()[99] == {"id": 99, "name": "item 99"}


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=6),
    coding=st.sampled_from(ALL),
)
def test_any_body_round_trips(body: bytes, cuts: list[int], coding: str) -> None:
    edges = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)] or [b""]
    stage = make_stage(responder(chunks, [(b"content-type", b"text/plain")]), min_size=0)
    start, bodies = asyncio.run(call(stage, coding))
    assert header(start, b"content-encoding") == coding.encode()
    if len(chunks) == 1:
        assert decompress(coding, bodies[0]) == body
    else:
        feed = chunk_decoder(coding)
        assert b"".join(feed(b) for b in bodies) == body


async def test_vary_merged_on_uncompressed_responses() -> None:
    headers = [*JSON, (b"content-length", b"2"), (b"vary", b"Origin")]
    start, bodies = await call(make_stage(responder([b"{}"], headers)), "gzip")
    assert header(start, b"content-encoding") is None
    assert header(start, b"vary") == b"Origin, Accept-Encoding"
    assert bodies == [b"{}"]

"""CORS stage: origin matching, preflights, response headers and Vary merging."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.fields import merge_vary
from bastion.http.problems import BastionError, send_problem
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.observe.metrics import Metrics
from bastion.pipeline.config import CorsConfig
from bastion.pipeline.cors import CorsStage
from bastion.settings import Settings
from stage_harness import RecordingApp as Upstream
from stage_harness import exchange

Headers = list[tuple[bytes, bytes]]

EXACT = "https://app.example.com"
PATTERNS = ["https://*.example.com", "https://*.dev.example.org:8443"]


def make_stage(app: ASGIApp | None = None, **config: Any) -> CorsStage:
    deps = Deps(settings=Settings(), metrics=Metrics(), routes=RouteTable([]), prefix="/_bastion")
    return CorsStage(app or Upstream(), config=CorsConfig(**config), deps=deps)


async def call(
    stage: ASGIApp, method: str = "GET", headers: Headers | None = None
) -> list[Message]:
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": "/items",
        "headers": headers or [],
        "state": {"bastion": RequestState("req-1", 0.0, "203.0.113.9", "https")},
    }
    return await exchange(stage, scope)


def header(message: Message, name: bytes) -> bytes | None:
    values = [v for k, v in message["headers"] if k == name]
    assert len(values) <= 1, f"{name!r} appears {len(values)} times"
    return values[0] if values else None


ORIGINS = [
    ("exact", EXACT, True),
    ("pattern one label", "https://api.example.com", True),
    ("pattern with port", "https://x.dev.example.org:8443", True),
    ("uppercase host", "https://API.Example.COM", True),
    ("suffix lookalike", "https://evil-example.com", False),
    ("bare parent domain", "https://example.com", False),
    ("two labels for one wildcard", "https://a.b.example.com", False),
    ("pattern then suffix", "https://api.example.com.evil.com", False),
    ("scheme mismatch", "http://api.example.com", False),
    ("port added", "https://api.example.com:8443", False),
    ("port missing", "https://x.dev.example.org", False),
    ("trailing slash", "https://api.example.com/", False),
    ("invalid label", "https://-x.example.com", False),
    ("null", "null", False),
    ("empty", "", False),
]


@pytest.mark.parametrize(
    ("origin", "allowed"), [c[1:] for c in ORIGINS], ids=[c[0] for c in ORIGINS]
)
async def test_origin_matching(origin: str, allowed: bool) -> None:
    stage = make_stage(origins=[EXACT], origin_patterns=PATTERNS, allow_credentials=True)
    start = (await call(stage, headers=[(b"origin", origin.encode())]))[0]
    assert header(start, b"vary") == b"Origin"
    if allowed:
        assert header(start, b"access-control-allow-origin") == origin.encode()
        assert header(start, b"access-control-allow-credentials") == b"true"
        assert header(start, b"access-control-expose-headers") == b"x-request-id"
    else:
        assert header(start, b"access-control-allow-origin") is None
        assert header(start, b"access-control-allow-credentials") is None


async def test_disallowed_origin_still_reaches_the_app() -> None:
    app = Upstream()
    start, body = await call(
        make_stage(app, origins=[EXACT]), headers=[(b"origin", b"https://evil.com")]
    )
    assert app.calls == 1
    assert start["status"] == 200
    assert body["body"] == b"ok"


async def test_any_origin_answers_star_and_never_null() -> None:
    stage = make_stage(origins=["*"])
    start = (await call(stage, headers=[(b"origin", b"https://whoever.net")]))[0]
    assert header(start, b"access-control-allow-origin") == b"*"
    assert header(start, b"access-control-allow-credentials") is None
    start = (await call(stage, headers=[(b"origin", b"null")]))[0]
    assert header(start, b"access-control-allow-origin") is None


async def test_request_without_origin_still_varies_on_origin() -> None:
    upstream = Upstream([(b"access-control-allow-origin", b"*")])
    start = (await call(make_stage(upstream, origins=[EXACT])))[0]
    # A shared cache must not serve this (CORS-less) answer to a cross-origin caller, and the
    # upstream's own CORS headers never decide.
    assert start["headers"] == [(b"vary", b"Origin")]


async def test_upstream_cors_headers_are_replaced() -> None:
    upstream = Upstream(
        [(b"access-control-allow-origin", b"*"), (b"access-control-allow-credentials", b"true")]
    )
    stage = make_stage(upstream, origins=[EXACT])
    start = (await call(stage, headers=[(b"origin", b"https://evil.com")]))[0]
    assert header(start, b"access-control-allow-origin") is None
    assert header(start, b"access-control-allow-credentials") is None
    start = (await call(stage, headers=[(b"origin", EXACT.encode())]))[0]
    assert header(start, b"access-control-allow-origin") == EXACT.encode()
    assert header(start, b"access-control-allow-credentials") is None


VARY = [
    ("absent", [], b"Origin"),
    ("other field", [(b"vary", b"Accept-Encoding")], b"Accept-Encoding, Origin"),
    ("already there", [(b"vary", b"accept-encoding, origin")], b"accept-encoding, origin"),
    ("star", [(b"vary", b"*")], b"*"),
    ("empty", [(b"vary", b"")], b"Origin"),
]


@pytest.mark.parametrize(("existing", "expected"), [c[1:] for c in VARY], ids=[c[0] for c in VARY])
async def test_vary_merging(existing: Headers, expected: bytes) -> None:
    stage = make_stage(Upstream(existing), origins=[EXACT])
    start = (await call(stage, headers=[(b"origin", EXACT.encode())]))[0]
    assert header(start, b"vary") == expected


def test_merge_vary_sees_every_vary_header() -> None:
    headers = [(b"vary", b"Accept"), (b"Vary", b"Origin")]
    merge_vary(headers, b"Origin")
    assert headers == [(b"vary", b"Accept"), (b"Vary", b"Origin")]


def preflight(origin: str, method: str = "PUT", names: str | None = None) -> Headers:
    headers = [(b"origin", origin.encode()), (b"access-control-request-method", method.encode())]
    if names is not None:
        headers.append((b"access-control-request-headers", names.encode()))
    return headers


async def test_preflight_allowed() -> None:
    app = Upstream()
    stage = make_stage(app, origins=[EXACT], allow_credentials=True, max_age="10m")
    start, body = await call(
        stage, "OPTIONS", preflight(EXACT, "PATCH", "Content-Type, X-Api-Key, accept")
    )
    assert app.calls == 0
    assert start["status"] == 204
    assert body["body"] == b""
    assert header(start, b"access-control-allow-origin") == EXACT.encode()
    assert header(start, b"access-control-allow-credentials") == b"true"
    assert header(start, b"access-control-allow-methods") == b"GET, HEAD, POST, PUT, PATCH, DELETE"
    assert header(start, b"access-control-allow-headers") == b"content-type, x-api-key, accept"
    assert header(start, b"access-control-max-age") == b"600"
    assert header(start, b"vary") == (
        b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    )
    assert header(start, b"access-control-allow-private-network") is None


async def test_preflight_without_requested_headers_allows_none() -> None:
    start = (
        await call(
            make_stage(origin_patterns=PATTERNS), "OPTIONS", preflight("https://a.example.com")
        )
    )[0]
    assert start["status"] == 204
    assert header(start, b"access-control-allow-headers") is None
    assert header(start, b"access-control-allow-credentials") is None


async def test_preflight_any_origin_answers_star() -> None:
    start = (await call(make_stage(origins=["*"]), "OPTIONS", preflight("https://x.net")))[0]
    assert header(start, b"access-control-allow-origin") == b"*"


REFUSED = [
    ("origin", preflight("https://evil.com"), "Origin not allowed"),
    ("null origin", preflight("null"), "Origin not allowed"),
    ("method", preflight(EXACT, "TRACE"), "Method not allowed for CORS"),
    ("method case", preflight(EXACT, "patch"), "Method not allowed for CORS"),
    ("header", preflight(EXACT, "PUT", "content-type, x-secret"), "Request header not allowed"),
]


@pytest.mark.parametrize(
    ("headers", "detail"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
async def test_preflight_refused(headers: Headers, detail: str) -> None:
    app = Upstream()
    with pytest.raises(BastionError) as caught:
        await call(make_stage(app, origins=[EXACT]), "OPTIONS", headers)
    assert caught.value.code == "cors_rejected"
    assert caught.value.status == 403
    assert caught.value.detail == detail
    assert caught.value.headers["Vary"].startswith("Origin")
    assert app.calls == 0


async def test_options_without_request_method_is_an_actual_request() -> None:
    app = Upstream()
    start = (
        await call(make_stage(app, origins=[EXACT]), "OPTIONS", [(b"origin", EXACT.encode())])
    )[0]
    assert app.calls == 1
    assert header(start, b"access-control-allow-origin") == EXACT.encode()


@pytest.mark.parametrize(("configured", "answered"), [(True, b"true"), (False, None)])
async def test_private_network_access(configured: bool, answered: bytes | None) -> None:
    headers = [*preflight(EXACT), (b"access-control-request-private-network", b"true")]
    stage = make_stage(origins=[EXACT], allow_private_network=configured)
    start = (await call(stage, "OPTIONS", headers))[0]
    assert header(start, b"access-control-allow-private-network") == answered


CONFIG_ERRORS = [
    ("star with credentials", {"origins": ["*"], "allow_credentials": True}),
    ("star among others", {"origins": ["*", EXACT]}),
    ("null origin", {"origins": ["null"]}),
    ("origin with path", {"origins": ["https://app.example.com/"]}),
    ("wildcard in origins", {"origins": ["https://*.example.com"]}),
    ("pattern too broad", {"origin_patterns": ["https://*.com"]}),
    ("pattern on registrable domain", {"origin_patterns": ["https://example.*.com"]}),
    ("partial label", {"origin_patterns": ["https://api-*.example.com"]}),
    ("pattern without wildcard", {"origin_patterns": ["https://a.example.com"]}),
    ("method star", {"origins": [EXACT], "allow_methods": ["*"]}),
    ("header star", {"origins": [EXACT], "allow_headers": ["*"]}),
]


@pytest.mark.parametrize("values", [c[1] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_refuses(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CorsConfig(**values)


def test_config_normalizes_origins() -> None:
    config = CorsConfig(
        origins=["HTTPS://App.Example.com:443", "http://localhost:8080"],
        origin_patterns=["https://*.Example.com:443"],
        allow_methods=["get", "post"],
        allow_headers=["X-Custom"],
    )
    assert config.origins == [EXACT, "http://localhost:8080"]
    assert config.origin_patterns == ["https://*.example.com"]
    assert config.allow_methods == ["GET", "POST"]
    assert config.allow_headers == ["x-custom"]
    assert config.enabled
    assert not CorsConfig().enabled


def test_through_starlette() -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi", headers={"Vary": "Accept-Language"})

    stage = make_stage(Starlette(routes=[Route("/items", hello)]), origins=[EXACT])

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["bastion"] = RequestState("req-1", 0.0, "127.0.0.1", "http")
        try:
            await stage(scope, receive, send)
        except BastionError as error:
            await send_problem(send, error, "req-1")

    with TestClient(outer) as client:
        response = client.get("/items", headers={"Origin": EXACT})
        assert response.text == "hi"
        assert response.headers["access-control-allow-origin"] == EXACT
        assert response.headers["vary"] == "Accept-Language, Origin"
        refused = client.options(
            "/items",
            headers={"Origin": "https://evil.com", "Access-Control-Request-Method": "PUT"},
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == "cors_rejected"
        assert "access-control-allow-origin" not in refused.headers

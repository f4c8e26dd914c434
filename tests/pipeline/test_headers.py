"""Security headers: present on every response, errors included; upstream identity stripped."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp
from bastion.http.state import state_of
from bastion.pipeline.client_ip import ClientIpStage
from bastion.pipeline.config import ClientIpConfig, HeadersConfig
from bastion.pipeline.headers import SecurityHeadersStage
from bastion.settings import Settings
from stage_harness import around, make_deps


async def _leaky(request: Request) -> Response:
    return PlainTextResponse(
        "ok",
        headers={"Server": "nginx/1.2", "X-Powered-By": "PHP/5", "X-Frame-Options": "SAMEORIGIN"},
    )


async def _nonce(request: Request) -> Response:
    return PlainTextResponse(state_of(request.scope).csp_nonce or "")


APP = Starlette(routes=[Route("/leaky", _leaky), Route("/nonce", _nonce)])


def client(config: HeadersConfig | None = None, trusted: list[str] | None = None) -> TestClient:
    settings = Settings(
        headers=config or HeadersConfig(),
        client_ip=ClientIpConfig(trusted_proxies=trusted or []),
    )
    deps = make_deps(settings)

    def stage(app: ASGIApp, d: Deps) -> ASGIApp:
        inner: ASGIApp = app
        if trusted:
            inner = ClientIpStage(inner, config=settings.client_ip, deps=d)
        return SecurityHeadersStage(inner, config=settings.headers, deps=d)

    return TestClient(around(stage, APP, deps))


def test_defaults_present_and_identity_stripped() -> None:
    response = client().get("/leaky")
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert "permissions-policy" in headers
    assert "server" not in headers
    assert "x-powered-by" not in headers
    # The upstream's own choice is kept unless override is configured.
    assert headers["x-frame-options"] == "SAMEORIGIN"
    # Plain HTTP: no HSTS.
    assert "strict-transport-security" not in headers


def test_override_replaces_upstream_values() -> None:
    response = client(HeadersConfig(override=True)).get("/leaky")
    assert response.headers.get_list("x-frame-options") == ["DENY"]


def test_errors_carry_headers() -> None:
    response = client().get("/missing")
    assert response.status_code == 404
    assert response.headers["x-content-type-options"] == "nosniff"


def test_hsts_only_over_https() -> None:
    https = TestClient(client().app, base_url="https://testserver")
    assert https.get("/leaky").headers["strict-transport-security"] == (
        "max-age=31536000; includeSubDomains"
    )


@pytest.mark.parametrize(
    ("peer_trusted", "expect_hsts"),
    [(True, True), (False, False)],
)
def test_hsts_by_forwarded_proto(peer_trusted: bool, expect_hsts: bool) -> None:
    trusted = ["192.0.2.0/24"] if peer_trusted else ["10.9.9.9/32"]
    app = client(trusted=trusted).app
    # TestClient's peer is the name "testclient", not an address: give the request a real peer.

    async def with_peer(scope, receive, send):  # type: ignore[no-untyped-def]
        scope["client"] = ("192.0.2.10", 1234)
        await app(scope, receive, send)

    response = TestClient(with_peer).get(
        "/leaky", headers={"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}
    )
    assert ("strict-transport-security" in response.headers) is expect_hsts


def test_csp_nonce_per_request() -> None:
    config = HeadersConfig(content_security_policy="script-src 'nonce-{nonce}'")
    c = client(config)
    first = c.get("/nonce")
    second = c.get("/nonce")
    assert first.text
    assert first.text != second.text
    assert first.headers["content-security-policy"] == f"script-src 'nonce-{first.text}'"


def test_disabled_headers_omitted() -> None:
    config = HeadersConfig(
        content_security_policy="", frame_options="", referrer_policy="", permissions_policy=""
    )
    headers = client(config).get("/leaky").headers
    assert "content-security-policy" not in headers
    assert "referrer-policy" not in headers
    assert "permissions-policy" not in headers

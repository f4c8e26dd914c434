"""CSRF stage: signed double-submit tokens, origin checks, exemptions and token issuance."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.principal import Principal
from bastion.http.problems import BastionError, send_problem
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.observe.metrics import Metrics
from bastion.pipeline.config import CsrfConfig
from bastion.pipeline.csrf import CsrfKeyRing, CsrfStage
from bastion.settings import Settings
from stage_harness import RecordingApp as Upstream
from stage_harness import exchange

Headers = list[tuple[bytes, bytes]]

KEY_OLD = b"old-signing-key-0123456789"
KEY_NEW = b"new-signing-key-0123456789"
SESSION = "sess-A"
OTHER_SESSION = "sess-B"


class Resolver:
    """A principal resolver returning a fixed answer and counting its calls."""

    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal
        self.calls = 0

    async def __call__(self, scope: Scope) -> Principal | None:
        self.calls += 1
        return self.principal


def make_stage(
    app: ASGIApp | None = None,
    *,
    keys: tuple[bytes, ...] = (KEY_NEW,),
    resolver: Resolver | None = None,
    **config: Any,
) -> CsrfStage:
    deps = Deps(
        settings=Settings(),
        metrics=Metrics(),
        routes=RouteTable([]),
        prefix="/_bastion",
        principal_resolver=resolver,
    )
    return CsrfStage(
        app or Upstream(),
        config=CsrfConfig(enabled=True, **config),
        deps=deps,
        keyring=CsrfKeyRing(keys),
    )


async def call(
    stage: ASGIApp,
    method: str = "POST",
    headers: Headers | None = None,
    *,
    path: str = "/api/items",
    scheme: str = "https",
    forwarded_host: str | None = None,
    host: bytes | None = b"shop.example.com",
) -> list[Message]:
    state = RequestState("req-1", 0.0, "203.0.113.9", scheme)
    state.forwarded_host = forwarded_host
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [*([(b"host", host)] if host else []), *(headers or [])],
        "state": {"bastion": state},
    }
    return await exchange(stage, scope)


def token_for(session: str, keys: tuple[bytes, ...] = (KEY_NEW,)) -> str:
    return make_stage(keys=keys).issue(session.encode())


def cookies(session: str | None = SESSION, token: str | None = None) -> Headers:
    parts = []
    if session is not None:
        parts.append(f"session={session}")
    if token is not None:
        parts.append(f"bastion_csrf={token}")
    return [(b"cookie", "; ".join(["theme=dark", *parts]).encode())]


def submitted(token: str, session: str = SESSION, **extra: str) -> Headers:
    """A request whose cookie and header both carry ``token``, plus ``extra`` headers."""
    headers = [*cookies(session, token), (b"x-csrf-token", token.encode())]
    headers.extend(
        (name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()
    )
    return headers


def tampered(token: str) -> str:
    head, _, mac = token.rpartition(".")
    return f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"


def set_cookies(message: Message) -> list[bytes]:
    return [v for k, v in message["headers"] if k == b"set-cookie"]


# (id, request headers built from a fresh token, expected failure detail or None for pass)
CASES: list[tuple[str, Callable[[str], Headers], str | None]] = [
    ("valid token", submitted, None),
    ("missing token", lambda t: cookies(), "Missing CSRF token header"),
    ("token in cookie only", lambda t: cookies(token=t), "Missing CSRF token header"),
    (
        "header differs from cookie",
        lambda t: [*cookies(token=t), (b"x-csrf-token", token_for(SESSION).encode())],
        "CSRF token does not match its cookie",
    ),
    (
        "token of another session",
        lambda t: submitted(token_for(OTHER_SESSION)),
        "Invalid CSRF token",
    ),
    ("tampered signature", lambda t: submitted(tampered(t)), "Invalid CSRF token"),
    ("malformed token", lambda t: submitted("not-a-token"), "Malformed CSRF token"),
    ("non-ascii token", lambda t: submitted(t + "\u00e9"), "Malformed CSRF token"),
    (
        "unknown key",
        lambda t: submitted(token_for(SESSION, (b"unknown-key-0123456789",))),
        "Invalid CSRF token",
    ),
    ("rotated key still verifies", lambda t: submitted(token_for(SESSION, (KEY_OLD,))), None),
    ("same origin", lambda t: submitted(t, origin="https://shop.example.com"), None),
    (
        "same origin, upper case",
        lambda t: submitted(t, origin="https://SHOP.example.com"),
        None,
    ),
    (
        "cross-site origin",
        lambda t: submitted(t, origin="https://evil.example"),
        "Origin not allowed",
    ),
    (
        "same host other scheme",
        lambda t: submitted(t, origin="http://shop.example.com"),
        "Origin not allowed",
    ),
    ("null origin", lambda t: submitted(t, origin="null"), "Opaque origin"),
    (
        "sec-fetch-site cross-site",
        lambda t: submitted(t, sec_fetch_site="cross-site"),
        "Cross-site request",
    ),
    ("sec-fetch-site same-origin", lambda t: submitted(t, sec_fetch_site="same-origin"), None),
    ("trusted origin", lambda t: submitted(t, origin="https://admin.example.com"), None),
    (
        "trusted origin cross-site",
        lambda t: submitted(t, origin="https://admin.example.com", sec_fetch_site="cross-site"),
        None,
    ),
    (
        "ambiguous session cookie",
        lambda t: [*submitted(t), (b"cookie", f"session={OTHER_SESSION}".encode())],
        "Ambiguous session cookie",
    ),
    ("no session cookie", lambda t: [(b"x-csrf-token", b"anything")], None),
    ("no session cookie, cross-site", lambda t: [(b"origin", b"https://evil.example")], None),
]


@pytest.mark.parametrize(("build", "failure"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_unsafe_requests(build: Callable[[str], Headers], failure: str | None) -> None:
    app = Upstream()
    stage = make_stage(app, keys=(KEY_NEW, KEY_OLD), trusted_origins=["https://admin.example.com"])
    headers = build(stage.issue(SESSION.encode()))
    if failure is None:
        start = (await call(stage, "POST", headers))[0]
        assert start["status"] == 200
        assert app.calls == 1
    else:
        with pytest.raises(BastionError) as caught:
            await call(stage, "POST", headers)
        assert caught.value.code == "csrf_failed"
        assert caught.value.status == 403
        assert caught.value.detail == failure
        assert app.calls == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "PROPFIND"])
async def test_every_unsafe_method_is_checked(method: str) -> None:
    with pytest.raises(BastionError):
        await call(make_stage(), method, cookies())


async def test_expired_token(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = make_stage(token_ttl="1h")
    token = stage.issue(SESSION.encode())
    assert stage.verify(token.encode(), SESSION.encode()) is None
    later = time.time() + 3601
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(BastionError) as caught:
        await call(stage, "POST", submitted(token))
    assert caught.value.detail == "Expired CSRF token"


async def test_token_from_the_future_beyond_skew(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = make_stage()
    token = stage.issue(SESSION.encode())
    earlier = time.time() - 120
    monkeypatch.setattr(time, "time", lambda: earlier)
    assert stage.verify(token.encode(), SESSION.encode()) == "Expired CSRF token"


async def test_failure_reissues_a_token_cookie() -> None:
    stage = make_stage()
    with pytest.raises(BastionError) as caught:
        await call(stage, "POST", cookies())
    cookie = caught.value.headers["Set-Cookie"]
    token = cookie.split(";", 1)[0].removeprefix("bastion_csrf=")
    assert stage.verify(token.encode(), SESSION.encode()) is None


async def test_failure_with_valid_token_cookie_sets_none() -> None:
    stage = make_stage()
    token = stage.issue(SESSION.encode())
    with pytest.raises(BastionError) as caught:
        await call(stage, "POST", submitted(token, origin="https://evil.example"))
    assert "Set-Cookie" not in caught.value.headers


PRINCIPALS = [
    ("bearer", Principal("u1", "bearer"), [(b"authorization", b"Bearer abc")], True),
    ("api key", Principal("svc", "api_key"), [(b"x-api-key", b"bst_abc")], True),
    ("forged bearer", None, [(b"authorization", b"Bearer forged")], False),
    ("session principal", Principal("u1", "session"), [(b"authorization", b"Bearer abc")], False),
]


@pytest.mark.parametrize(
    ("principal", "credential", "exempt"),
    [c[1:] for c in PRINCIPALS],
    ids=[c[0] for c in PRINCIPALS],
)
async def test_verified_principal_exemption(
    principal: Principal | None, credential: Headers, exempt: bool
) -> None:
    resolver = Resolver(principal)
    stage = make_stage(resolver=resolver)
    headers = [*cookies(), *credential]
    if exempt:
        assert (await call(stage, "POST", headers))[0]["status"] == 200
    else:
        with pytest.raises(BastionError):
            await call(stage, "POST", headers)
    assert resolver.calls == 1


async def test_no_resolver_never_exempts() -> None:
    with pytest.raises(BastionError):
        await call(make_stage(), "POST", [*cookies(), (b"authorization", b"Bearer abc")])


async def test_resolver_consulted_only_for_failing_requests_with_credentials() -> None:
    resolver = Resolver(Principal("u1", "bearer"))
    stage = make_stage(resolver=resolver)
    token = stage.issue(SESSION.encode())
    await call(stage, "POST", [*submitted(token), (b"authorization", b"Bearer abc")])
    with pytest.raises(BastionError):
        await call(stage, "POST", cookies())
    assert resolver.calls == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
async def test_safe_methods_pass_and_receive_a_token(method: str) -> None:
    stage = make_stage()
    start = (await call(stage, method, cookies()))[0]
    assert start["status"] == 200
    (cookie,) = set_cookies(start)
    token, _, attributes = cookie.decode().partition("; ")
    assert token.startswith("bastion_csrf=")
    assert stage.verify(token.removeprefix("bastion_csrf=").encode(), SESSION.encode()) is None
    assert attributes == "Path=/; Max-Age=43200; SameSite=Lax; Secure"
    assert "httponly" not in cookie.decode().lower()


async def test_cookie_attributes_follow_config() -> None:
    stage = make_stage(cookie_name="xsrf", cookie_secure=False, cookie_samesite="strict")
    (cookie,) = set_cookies((await call(stage, "GET", cookies()))[0])
    assert cookie.startswith(b"xsrf=")
    assert cookie.endswith(b"; SameSite=Strict")


async def test_valid_token_is_not_reissued() -> None:
    stage = make_stage()
    token = stage.issue(SESSION.encode())
    assert set_cookies((await call(stage, "GET", cookies(token=token)))[0]) == []


async def test_token_of_previous_session_is_replaced() -> None:
    stage = make_stage()
    stale = stage.issue(OTHER_SESSION.encode())
    (cookie,) = set_cookies((await call(stage, "GET", cookies(token=stale)))[0])
    assert stale.encode() not in cookie


async def test_no_session_no_token() -> None:
    assert set_cookies((await call(make_stage(), "GET", []))[0]) == []


@pytest.mark.parametrize(
    ("session_cookie", "issued"),
    [
        (b"session=fresh-1; Path=/; HttpOnly; Secure", True),
        (b"session=fresh-1; Max-Age=3600", True),
        (b"session=; Max-Age=0; Path=/", False),
        (b"session=gone; Max-Age=0", False),
        (b"session=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT", False),
        (b"session=fresh-1; Expires=Fri, 01 Jan 2100 00:00:00 GMT", True),
        (b"session=fresh-1; Max-Age=soon", True),
    ],
    ids=["set", "max-age", "emptied", "max-age 0", "expired", "future expiry", "bad max-age"],
)
async def test_token_issued_when_response_sets_the_session(
    session_cookie: bytes, issued: bool
) -> None:
    stage = make_stage(Upstream([(b"set-cookie", session_cookie)]))
    start = (await call(stage, "POST", [], path="/login"))[0]
    tokens = [c for c in set_cookies(start) if c.startswith(b"bastion_csrf=")]
    if issued:
        (cookie,) = tokens
        token = cookie.split(b";")[0].removeprefix(b"bastion_csrf=")
        assert stage.verify(token, b"fresh-1") is None
        assert stage.verify(token, SESSION.encode()) == "Invalid CSRF token"
    else:
        assert tokens == []


async def test_logout_does_not_issue_for_the_old_session() -> None:
    stage = make_stage(Upstream([(b"set-cookie", b"session=; Max-Age=0")]))
    start = (await call(stage, "GET", cookies()))[0]
    assert [c for c in set_cookies(start) if c.startswith(b"bastion_csrf=")] == []


async def test_app_managed_token_cookie_is_left_alone() -> None:
    stage = make_stage(Upstream([(b"set-cookie", b"bastion_csrf=app-made; Path=/")]))
    assert set_cookies((await call(stage, "GET", cookies()))[0]) == [
        b"bastion_csrf=app-made; Path=/"
    ]


@pytest.mark.parametrize(
    ("path", "checked"),
    [("/api/items", True), ("/api/hooks/stripe", False), ("/public/form", False)],
)
async def test_paths_and_exemptions(path: str, checked: bool) -> None:
    stage = make_stage(paths=["/api/**"], exempt_paths=["/api/hooks/*"])
    if checked:
        with pytest.raises(BastionError):
            await call(stage, "POST", cookies(), path=path)
    else:
        assert (await call(stage, "POST", cookies(), path=path))[0]["status"] == 200


@pytest.mark.parametrize(
    ("scheme", "forwarded_host", "origin", "passes"),
    [
        ("https", "public.example.com", "https://public.example.com", True),
        ("https", "public.example.com", "https://shop.example.com", False),
        ("http", "shop.example.com:80", "http://shop.example.com", True),
        ("https", "shop.example.com:8443", "https://shop.example.com:8443", True),
    ],
)
async def test_own_origin_from_request_state(
    scheme: str, forwarded_host: str, origin: str, passes: bool
) -> None:
    stage = make_stage()
    headers = submitted(stage.issue(SESSION.encode()), origin=origin)
    if passes:
        start = (await call(stage, "POST", headers, scheme=scheme, forwarded_host=forwarded_host))[
            0
        ]
        assert start["status"] == 200
    else:
        with pytest.raises(BastionError):
            await call(stage, "POST", headers, scheme=scheme, forwarded_host=forwarded_host)


async def test_origin_without_host_is_refused() -> None:
    stage = make_stage()
    headers = submitted(stage.issue(SESSION.encode()), origin="https://shop.example.com")
    with pytest.raises(BastionError) as caught:
        await call(stage, "POST", headers, host=None)
    assert caught.value.detail == "Origin not allowed"
    assert (await call(stage, "POST", submitted(stage.issue(SESSION.encode())), host=None))[0][
        "status"
    ] == 200


def test_keyring_derives_and_rotates() -> None:
    ring = CsrfKeyRing([KEY_NEW])
    assert len(ring.keys) == 1
    assert ring.keys[0] != KEY_NEW
    ring.set([KEY_NEW, KEY_OLD])
    assert len(ring.keys) == 2
    assert CsrfKeyRing([KEY_NEW]).keys == ring.keys[:1]


def test_config_secrets_without_keyring() -> None:
    deps = Deps(settings=Settings(), metrics=Metrics(), routes=RouteTable([]), prefix="/_bastion")
    config = CsrfConfig(enabled=True, secrets=[KEY_NEW.decode()])
    stage = CsrfStage(Upstream(), config=config, deps=deps)
    assert stage.verify(token_for(SESSION).encode(), SESSION.encode()) is None
    with pytest.raises(ValueError, match="secrets"):
        CsrfStage(Upstream(), config=CsrfConfig(enabled=True), deps=deps)


async def test_empty_keyring_fails_at_request_time() -> None:
    stage = make_stage(keys=())
    with pytest.raises(RuntimeError, match="not loaded"):
        await call(stage, "GET", cookies())
    assert (await call(stage, "GET", []))[0]["status"] == 200


@pytest.mark.parametrize(
    "values",
    [
        {"secrets": ["short"]},
        {"cookie_samesite": "none", "cookie_secure": False},
        {"trusted_origins": ["https://app.example.com/path"]},
        {"paths": ["api/**"]},
        {"token_ttl": "0s"},
    ],
    ids=[
        "short secret",
        "samesite none without secure",
        "origin with path",
        "relative glob",
        "ttl",
    ],
)
def test_config_refuses(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CsrfConfig(**values)


def test_login_then_unsafe_request_through_starlette() -> None:
    async def login(request: Request) -> PlainTextResponse:
        response = PlainTextResponse("welcome")
        response.set_cookie("session", "s-42", httponly=True)
        return response

    async def update(request: Request) -> PlainTextResponse:
        return PlainTextResponse("updated")

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/api/items", update, methods=["POST"]),
        ]
    )
    stage = make_stage(app, cookie_secure=False)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["bastion"] = RequestState("req-1", 0.0, "127.0.0.1", "http")
        try:
            await stage(scope, receive, send)
        except BastionError as error:
            await send_problem(send, error, "req-1")

    with TestClient(outer, base_url="http://testserver") as client:
        assert client.post("/login").text == "welcome"
        token = client.cookies["bastion_csrf"]
        refused = client.post("/api/items")
        assert refused.status_code == 403
        assert refused.json()["code"] == "csrf_failed"
        accepted = client.post(
            "/api/items", headers={"X-CSRF-Token": token, "Origin": "http://testserver"}
        )
        assert accepted.status_code == 200
        assert accepted.text == "updated"


WS_CASES = [
    # id, origin, with session cookie, refused
    ("own-origin", b"https://shop.example.com", True, False),
    ("cross-site", b"https://evil.example", True, True),
    ("null-origin", b"null", True, True),
    ("scheme-downgrade", b"http://shop.example.com", True, True),
    ("no-session-cookie", b"https://evil.example", False, False),
    ("no-origin-not-a-browser", None, True, False),
    ("trusted-origin", b"https://partner.example", True, False),
]


@pytest.mark.parametrize(
    ("origin", "with_session", "refused"),
    [case[1:] for case in WS_CASES],
    ids=[case[0] for case in WS_CASES],
)
async def test_websocket_handshakes_checked_for_cross_site_hijacking(
    origin: bytes | None, with_session: bool, refused: bool
) -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"])

    stage = make_stage(app, trusted_origins=["https://partner.example"])
    headers: Headers = [(b"host", b"shop.example.com")]
    if with_session:
        headers += cookies()
    if origin is not None:
        headers.append((b"origin", origin))
    state = RequestState("req-1", 0.0, "203.0.113.9", "wss")
    scope: Scope = {
        "type": "websocket",
        "path": "/api/live",
        "headers": headers,
        "state": {"bastion": state},
    }

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        raise AssertionError("not sent")

    if refused:
        with pytest.raises(BastionError) as info:
            await stage(scope, receive, send)
        assert info.value.code == "csrf_failed"
        assert reached == []
    else:
        await stage(scope, receive, send)
        assert reached == ["websocket"]

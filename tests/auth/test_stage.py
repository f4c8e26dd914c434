"""The ``auth`` stage in middleware mode: which credentials are Bastion's to judge, the route
rules and default deny, ambiguous credentials, account status, audit of denials, WebSockets."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from auth.http_harness import Wrapped, assert_auth_problem, bearer, headers_of, wrapped
from auth.service_harness import auth_config
from bastion.auth.api_keys import generate_api_key
from bastion.auth.config import AccessRule, TokenConfig
from bastion.http.asgi import Message
from bastion.http.principal import Principal

FOREIGN_KEY = Ed25519PrivateKey.generate()


async def echo(request: Request) -> Response:
    """What the app saw: the path, the headers and the principal Bastion established."""
    principal = request.scope["state"]["bastion"].principal
    return JSONResponse(
        {
            "path": request.url.path,
            "headers": dict(request.headers),
            "principal": principal.subject if isinstance(principal, Principal) else None,
        }
    )


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("accepted")
    await websocket.close()


def make_app() -> Starlette:
    return Starlette(
        routes=[
            WebSocketRoute("/ws/{rest:path}", socket),
            Route("/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        ]
    )


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode("ascii")


def _claims(issuer: str) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": "intruder", "aud": "bastion", "iat": now, "exp": now + 600}


def foreign_signed(issuer: str) -> str:
    """A well-formed EdDSA JWT signed with a key Bastion never saw."""
    return jwt.encode(
        _claims(issuer), FOREIGN_KEY, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": "x1"}
    )


# -- no rules ---------------------------------------------------------------------------------


async def test_without_rules_everything_passes_without_a_principal(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        for method in ("GET", "POST", "DELETE"):
            response = await w.client.request(method, "/api/admin/users")
            assert response.status_code == 200
            assert response.json()["principal"] is None
        assert w.audit.events == []


def _forgeries(token: str, kid: str) -> list[tuple[str, str]]:
    header, payload, signature = token.split(".")
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    hmac_forgery = jwt.encode(_claims("bastion"), "guessed-secret-" * 3, algorithm="HS256")
    none_alg = _segment({"alg": "none", "typ": "at+jwt"}) + "." + _segment(_claims("bastion")) + "."
    return [
        ("foreign-key-our-issuer", foreign_signed("bastion")),
        ("signature-flipped", f"{header}.{payload}.{flipped}"),
        ("payload-swapped", f"{header}.{_segment(_claims('bastion'))}.{signature}"),
        ("hs256-our-issuer", hmac_forgery),
        ("alg-none-our-issuer", none_alg),
        ("our-kid-garbage-payload", _segment({"alg": "EdDSA", "kid": kid}) + ".e30x.AAAA"),
    ]


async def test_forged_bastion_jwts_are_refused_on_unprotected_routes(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        real = await w.token("alice@example.com")
        kid = w.service.signing.ring.signing.kid
        assert (await w.client.get("/open", headers=bearer(real))).status_code == 200
        for name, forged in _forgeries(real, kid):
            response = await w.client.get("/open", headers=bearer(forged))
            assert response.status_code == 401, name
            assert_auth_problem(response, 401, "invalid_token")


@pytest.mark.parametrize(
    ("id_", "value"),
    [
        ("bst-too-short", "bst_abc"),
        ("bst-bad-checksum", generate_api_key()[:-1] + "Z"),
        ("bst-unknown-but-well-formed", generate_api_key()),
        ("bst-bare-prefix", "bst_"),
    ],
)
async def test_malformed_or_unknown_api_keys_are_refused_on_unprotected_routes(
    tmp_path: Path, id_: str, value: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        for headers in (bearer(value), {"X-API-Key": value}):
            assert_auth_problem(await w.client.get("/open", headers=headers), 401, "invalid_token")


@pytest.mark.parametrize(
    ("id_", "authorization"),
    [
        ("foreign-issuer-jwt", "Bearer " + foreign_signed("https://login.example.org")),
        ("basic", "Basic " + base64.b64encode(b"user:pass").decode("ascii")),
        ("opaque-bearer", "Bearer 0123456789abcdef"),
        ("non-rfc6750-bearer", "Bearer abc:def ghi"),
        ("other-scheme", 'Digest username="u", realm="r"'),
    ],
)
async def test_foreign_credentials_pass_untouched_on_unprotected_routes(
    tmp_path: Path, id_: str, authorization: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        response = await w.client.get("/open", headers={"Authorization": authorization})
        assert response.status_code == 200, response.text
        assert headers_of(response)["authorization"] == authorization
        assert response.json()["principal"] is None


@pytest.mark.parametrize(
    ("id_", "authorization"),
    [
        ("tab-after-scheme", "Bearer\tbst_abc"),
        ("upper-case-scheme", "BEARER bst_abc"),
        ("lower-case-scheme", "bearer bst_abc"),
        ("spaces-around", "  Bearer   bst_abc  "),
    ],
)
async def test_scheme_spelling_does_not_hide_a_bastion_credential(
    tmp_path: Path, id_: str, authorization: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        response = await w.client.get("/open", headers={"Authorization": authorization})
        assert_auth_problem(response, 401, "invalid_token")


@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer   "])
async def test_an_empty_authorization_is_no_credential(tmp_path: Path, authorization: str) -> None:
    auth = auth_config(rules=[AccessRule(path="/private/**", authenticated=True)])
    async with wrapped(tmp_path, make_app(), auth) as w:
        headers = {"Authorization": authorization}
        assert (await w.client.get("/open", headers=headers)).status_code == 200
        private = await w.client.get("/private/x", headers=headers)
        assert_auth_problem(private, 401, "authentication_required")


async def test_foreign_credentials_cannot_authenticate_on_protected_routes(tmp_path: Path) -> None:
    auth = auth_config(rules=[AccessRule(path="/api/**", authenticated=True)])
    async with wrapped(tmp_path, make_app(), auth) as w:
        basic = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode("ascii")}
        assert_auth_problem(
            await w.client.get("/api/x", headers=basic), 401, "authentication_required"
        )
        foreign = bearer(foreign_signed("https://login.example.org"))
        assert_auth_problem(await w.client.get("/api/x", headers=foreign), 401, "invalid_token")


# -- rules --------------------------------------------------------------------------------------

RULES = [
    AccessRule(path="/api/public/**", public=True),
    AccessRule(path="/api/admin/**", require="admin:*"),
    AccessRule(path="/api/orders/**", methods=["POST", "DELETE"], require="orders:write"),
    AccessRule(path="/api/orders/**", authenticated=True),
    AccessRule(path="/api/**", public=True),
]

# (id, method, path, who, status, code): who is anonymous, viewer, operator or admin.
RULE_CASES = [
    ("public-anonymous", "GET", "/api/public/page", "anonymous", 200, None),
    ("public-viewer", "GET", "/api/public/page", "viewer", 200, None),
    ("admin-as-admin", "GET", "/api/admin/users", "admin", 200, None),
    ("admin-as-viewer", "GET", "/api/admin/users", "viewer", 403, "permission_denied"),
    ("admin-as-operator", "POST", "/api/admin/users", "operator", 403, "permission_denied"),
    ("admin-anonymous", "GET", "/api/admin/users", "anonymous", 401, "authentication_required"),
    ("admin-head-anonymous", "HEAD", "/api/admin/users", "anonymous", 401, None),
    ("orders-read-as-viewer", "GET", "/api/orders/7", "viewer", 200, None),
    ("orders-read-anonymous", "GET", "/api/orders/7", "anonymous", 401, "authentication_required"),
    ("orders-write-as-viewer", "POST", "/api/orders/7", "viewer", 403, "permission_denied"),
    ("orders-write-as-operator", "POST", "/api/orders/7", "operator", 200, None),
    (
        "orders-delete-anonymous",
        "DELETE",
        "/api/orders/7",
        "anonymous",
        401,
        "authentication_required",
    ),
    ("catch-all-public", "GET", "/api/else", "anonymous", 200, None),
    ("double-slash", "GET", "//api/admin/x", "anonymous", 401, "authentication_required"),
    ("double-slash-viewer", "GET", "//api/admin/x", "viewer", 403, "permission_denied"),
    ("inner-double-slash", "GET", "/api//admin/x", "anonymous", 401, "authentication_required"),
    ("many-slashes", "GET", "///api///admin///x", "anonymous", 401, "authentication_required"),
]


async def _tokens(w: Wrapped) -> dict[str, dict[str, str]]:
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for role in ("viewer", "operator", "admin"):
        headers[role] = bearer(await w.token(f"{role}@example.com", role))
    return headers


async def test_route_rules(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app(), auth_config(rules=RULES)) as w:
        who = await _tokens(w)
        for id_, method, path, user, status, code in RULE_CASES:
            response = await w.client.request(method, "http://testserver" + path, headers=who[user])
            assert response.status_code == status, (id_, response.text)
            if code is not None:
                assert_auth_problem(response, status, code)
            elif status == 401:  # HEAD: no body to read, but the challenge is there
                assert response.headers["www-authenticate"] == 'Bearer realm="bastion"', id_
            if status == 200 and method != "HEAD":
                seen = response.json()["principal"]
                assert (seen is None) == (user == "anonymous"), id_


async def test_protect_denies_by_default(tmp_path: Path) -> None:
    auth = auth_config(
        protect=["/internal/**"],
        rules=[AccessRule(path="/internal/status", authenticated=True)],
    )
    async with wrapped(tmp_path, make_app(), auth) as w:
        who = await _tokens(w)
        cases = [
            ("anonymous", "/internal/x", 401, "authentication_required"),
            ("viewer", "/internal/x", 403, "permission_denied"),
            ("operator", "/internal/x", 403, "permission_denied"),
            ("admin", "/internal/x", 200, None),
            ("viewer", "/internal/status", 200, None),
            ("anonymous", "//internal/x", 401, "authentication_required"),
            ("anonymous", "/elsewhere", 200, None),
        ]
        for user, path, status, code in cases:
            response = await w.client.get("http://testserver" + path, headers=who[user])
            if code is None:
                assert response.status_code == status, (user, path, response.text)
            else:
                assert_auth_problem(response, status, code)


# -- ambiguous credentials ------------------------------------------------------------------


async def test_ambiguous_credentials_are_refused(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        token = await w.token("alice@example.com")
        key = (await w.admin.create_api_key("alice@example.com")).key
        cases: list[tuple[str, list[tuple[str, str]]]] = [
            ("two-authorization", [("Authorization", f"Bearer {token}")] * 2),
            (
                "bearer-and-basic",
                [("Authorization", f"Bearer {token}"), ("Authorization", "Basic dTpw")],
            ),
            ("two-tokens-in-one", [("Authorization", f"Bearer {token} {token}")]),
            ("two-tokens-comma", [("Authorization", f"Bearer {token},{token}")]),
            ("token-and-garbage", [("Authorization", f"Bearer {token} x")]),
            ("bearer-and-api-key", [("Authorization", f"Bearer {token}"), ("X-API-Key", key)]),
            ("two-api-keys", [("X-API-Key", key), ("X-API-Key", key)]),
        ]
        for id_, headers in cases:
            response = await w.client.get("/open", headers=headers)
            assert response.status_code == 401, id_
            assert_auth_problem(response, 401, "invalid_token")


async def test_api_keys_work_in_either_header(tmp_path: Path) -> None:
    auth = auth_config(rules=[AccessRule(path="/api/**", require="orders:read")])
    async with wrapped(tmp_path, make_app(), auth) as w:
        user_id = await w.user("svc@example.com", "viewer")
        key = (await w.admin.create_api_key("svc@example.com", scopes=["orders:read"])).key
        for headers in ({"X-API-Key": key}, bearer(key), {"x-api-key": f"  {key}  "}):
            response = await w.client.get("/api/orders", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["principal"] == user_id


async def test_a_suspended_users_token_is_refused(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        token = await w.token("alice@example.com")
        assert (await w.client.get("/open", headers=bearer(token))).status_code == 200
        await w.admin.set_status("alice@example.com", "suspended")
        response = await w.client.get("/open", headers=bearer(token))
        assert_auth_problem(response, 403, "account_suspended")
        await w.admin.set_status("alice@example.com", "active")
        assert (await w.client.get("/open", headers=bearer(token))).status_code == 200


# -- audit ------------------------------------------------------------------------------------


async def test_access_denials_are_audited(tmp_path: Path) -> None:
    auth = auth_config(rules=RULES)
    async with wrapped(tmp_path, make_app(), auth) as w:
        viewer = await w.user("viewer@example.com", "viewer")
        token = str((await w.login("viewer@example.com"))["access_token"])
        response = await w.client.post(
            "/api/admin/users", headers={**bearer(token), "X-Request-ID": "deny-1"}
        )
        assert_auth_problem(response, 403, "permission_denied")
        denied = [event for event in w.audit.events if event.kind == "access.denied"]
        assert len(denied) == 1
        event = denied[0]
        assert (event.actor, event.outcome, event.target) == (viewer, "denied", "/api/admin/users")
        assert event.request_id == "deny-1"
        assert event.client_ip == "203.0.113.9"
        assert event.detail == {"permission": "admin:*", "method": "POST"}
        # An anonymous refusal names nobody: it is a 401, not an access decision about a user.
        await w.client.get("/api/admin/users")
        assert [e.kind for e in w.audit.events].count("access.denied") == 1


# -- websockets -------------------------------------------------------------------------------


async def _handshake(w: Wrapped, path: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Drive a WebSocket handshake through the wrapped app; return what it sent."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("203.0.113.9", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "state": {},
    }
    inbox: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    app = w.engine.wrap(make_app())
    await app(scope, receive, send)
    return sent


async def test_websocket_to_a_protected_path_needs_a_credential(tmp_path: Path) -> None:
    auth = auth_config(rules=[AccessRule(path="/ws/private/**", authenticated=True)])
    async with wrapped(tmp_path, make_app(), auth) as w:
        token = await w.token("alice@example.com")
        refused = await _handshake(w, "/ws/private/feed", [])
        assert [m["type"] for m in refused] == ["websocket.close"]
        assert refused[0]["code"] == 1008
        assert refused[0]["reason"] == "authentication_required"
        forged = await _handshake(
            w, "/ws/open", [(b"authorization", b"Bearer " + foreign_signed("bastion").encode())]
        )
        assert [m["type"] for m in forged] == ["websocket.close"]
        allowed = await _handshake(
            w, "/ws/private/feed", [(b"authorization", f"Bearer {token}".encode())]
        )
        assert allowed[0]["type"] == "websocket.accept"
        open_path = await _handshake(w, "/ws/open", [])
        assert open_path[0]["type"] == "websocket.accept"


async def test_own_identity_endpoints_are_reachable_under_protect_everything(
    tmp_path: Path,
) -> None:
    auth = auth_config(protect=["/**"], tokens=TokenConfig(jwks_paths=["/jwks.json"]))
    async with wrapped(tmp_path, make_app(), auth) as w:
        await w.user("alice@example.com", "viewer")
        pair = await w.login("alice@example.com")
        token = pair["access_token"]
        for path in ("/_bastion/.well-known/jwks.json", "/jwks.json"):
            assert (await w.client.get(path)).status_code == 200, path
        me = await w.client.get("/_bastion/auth/me", headers=bearer(token))
        assert me.status_code == 200
        refreshed = await w.client.post(
            "/_bastion/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert refreshed.status_code == 200
        # Everything else stays denied, including paths that only look like Bastion's own.
        for path in ("/app", "//_bastion/auth/login", "/_bastion/authx"):
            anonymous = await w.client.get("http://testserver" + path)
            assert_auth_problem(anonymous, 401, "authentication_required")
        assert_auth_problem(
            await w.client.get("/app", headers=bearer(token)), 403, "permission_denied"
        )
        # A forged Bastion credential is still refused on the endpoints that use one ...
        forged = bearer(foreign_signed("bastion"))
        assert_auth_problem(
            await w.client.get("/_bastion/auth/me", headers=forged), 401, "invalid_token"
        )
        # ... while login, refresh and the JWKS ignore credentials: a client attaching a stale
        # token to every call can still refresh and log in.
        assert (await w.client.get("/_bastion/.well-known/jwks.json", headers=forged)).is_success
        stale = await w.client.post(
            "/_bastion/auth/refresh",
            json={"refresh_token": refreshed.json()["refresh_token"]},
            headers=forged,
        )
        assert stale.status_code == 200

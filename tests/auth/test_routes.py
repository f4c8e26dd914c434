"""Bastion's identity endpoints over HTTP: login, refresh, logout, me, sessions, MFA enrolment,
method and path errors, and the JWKS an upstream verifies access tokens with."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from auth.http_harness import LOGIN, Wrapped, assert_auth_problem, bearer, wrapped
from auth.service_harness import PASSWORD, auth_config
from bastion.auth.config import ThrottleConfig, TokenConfig
from problem_assertions import assert_problem

AUTH = "/_bastion/auth"
JWKS = "/_bastion/.well-known/jwks.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def make_app() -> Starlette:
    return Starlette(routes=[Route("/hello", hello)])


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"


# -- login ------------------------------------------------------------------------------------


async def test_login_answers_exactly_a_token_pair(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        response = await w.client.post(
            LOGIN, json={"username": "Alice@Example.com ", "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert_no_store(response)
        body = response.json()
        assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 900
        assert body["access_token"].count(".") == 2
        assert body["refresh_token"].startswith("bst_rt_")


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not-json", b"username=alice&password=x", "body"),
    ("empty", b"", "body"),
    ("json-array", b'["alice@example.com", "pw"]', "body"),
    ("json-string", b'"alice"', "body"),
    ("missing-username", b'{"password": "correct horse battery staple"}', "username"),
    ("username-null", b'{"username": null, "password": "pw-pw-pw-pw"}', "username"),
    (
        "password-not-a-string",
        b'{"username": "alice@example.com", "password": 12345678}',
        "password",
    ),
    ("password-a-list", b'{"username": "alice@example.com", "password": ["a"]}', "password"),
    ("empty-username", b'{"username": "", "password": "pw-pw-pw-pw"}', "username"),
    ("empty-password", b'{"username": "alice@example.com", "password": ""}', "password"),
    ("otp-a-number", b'{"username": "alice@example.com", "password": "pw", "otp": 123456}', "otp"),
    ("otp-empty", b'{"username": "alice@example.com", "password": "pw", "otp": ""}', "otp"),
]


@pytest.mark.parametrize(("id_", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_login_bodies_are_400_naming_the_member(
    tmp_path: Path, id_: str, body: bytes, field: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        response = await w.client.post(
            LOGIN, content=body, headers={"Content-Type": "application/json"}
        )
        data = assert_problem(response, 400, "bad_request")
        assert data["errors"], data
        assert [error["field"] for error in data["errors"]] == [field]
        assert "correct horse" not in response.text
        # Nothing was attempted, so nothing counts as a failed login.
        assert "auth.login.failed" not in w.audit.kinds()


async def test_wrong_password_and_unknown_user_get_the_same_401(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        wrong = await w.client.post(
            LOGIN, json={"username": "alice@example.com", "password": "not the password"}
        )
        unknown = await w.client.post(
            LOGIN, json={"username": "nobody@example.com", "password": "not the password"}
        )
        first = assert_auth_problem(wrong, 401, "invalid_credentials")
        second = assert_auth_problem(unknown, 401, "invalid_credentials")
        assert first["detail"] == second["detail"]
        assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]


async def test_repeated_failures_are_throttled_with_retry_after(tmp_path: Path) -> None:
    auth = auth_config(throttle=ThrottleConfig(pair_failures=2, base_delay=30.0))
    async with wrapped(tmp_path, make_app(), auth) as w:
        await w.user("alice@example.com")
        wrong = {"username": "alice@example.com", "password": "not the password"}
        statuses = [(await w.client.post(LOGIN, json=wrong)).status_code for _ in range(2)]
        assert statuses[0] == 401
        throttled = await w.client.post(LOGIN, json=wrong)
        data = assert_problem(throttled, 429, "login_throttled")
        assert isinstance(data["retry_after"], int)
        assert data["retry_after"] >= 1
        assert throttled.headers["retry-after"] == str(data["retry_after"])
        # Throttled means refused before the password is looked at, even the right one.
        right = await w.client.post(
            LOGIN, json={"username": "alice@example.com", "password": PASSWORD}
        )
        assert_problem(right, 429, "login_throttled")


# -- refresh and logout ----------------------------------------------------------------------


async def _refresh(w: Wrapped, token: str) -> httpx.Response:
    return await w.client.post(f"{AUTH}/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_a_reuse_kills_the_family(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        first = await w.login("alice@example.com")
        rotated = await _refresh(w, first["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        assert_no_store(rotated)
        second = rotated.json()
        assert set(second) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert second["refresh_token"] != first["refresh_token"]
        me = await w.client.get(f"{AUTH}/me", headers=bearer(second["access_token"]))
        assert me.status_code == 200

        reused = await _refresh(w, first["refresh_token"])
        assert_auth_problem(reused, 401, "token_reused")
        assert "auth.token.reused" in w.audit.kinds()
        # The whole family is dead: the newest refresh token and the session's access tokens.
        assert_auth_problem(await _refresh(w, second["refresh_token"]), 401, "invalid_token")
        for access in (first["access_token"], second["access_token"]):
            gone = await w.client.get(f"{AUTH}/me", headers=bearer(access))
            assert_auth_problem(gone, 401, "invalid_token")


@pytest.mark.parametrize(
    ("id_", "body", "status", "code"),
    [
        ("garbage", {"refresh_token": "bst_rt_" + "x" * 43}, 401, "invalid_token"),
        ("access-token-shaped", {"refresh_token": "a.b.c"}, 401, "invalid_token"),
        ("missing", {}, 400, "bad_request"),
        ("not-a-string", {"refresh_token": 7}, 400, "bad_request"),
    ],
)
async def test_unusable_refresh_requests(
    tmp_path: Path, id_: str, body: dict[str, Any], status: int, code: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        response = await w.client.post(f"{AUTH}/refresh", json=body)
        assert_auth_problem(response, status, code)


async def test_logout_ends_the_session(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        pair = await w.login("alice@example.com")
        headers = bearer(pair["access_token"])
        assert (await w.client.get(f"{AUTH}/me", headers=headers)).status_code == 200
        out = await w.client.post(f"{AUTH}/logout", headers=headers)
        assert out.status_code == 204
        assert out.content == b""
        assert_auth_problem(await w.client.get(f"{AUTH}/me", headers=headers), 401, "invalid_token")
        assert_auth_problem(await _refresh(w, pair["refresh_token"]), 401, "invalid_token")
        # Logging out again with the dead token is a 401, not a silent success.
        again = await w.client.post(f"{AUTH}/logout", headers=headers)
        assert_auth_problem(again, 401, "invalid_token")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/me"),
        ("POST", "/logout"),
        ("GET", "/sessions"),
        ("DELETE", "/sessions/abc"),
        ("POST", "/mfa/setup"),
        ("POST", "/mfa/verify"),
        ("POST", "/mfa/disable"),
    ],
)
async def test_endpoints_of_the_signed_in_user_need_a_credential(
    tmp_path: Path, method: str, path: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        # GET and DELETE without a body: inspection refuses a body on GET (request smuggling).
        body = {"json": {"otp": "123456"}} if method == "POST" else {}
        response = await w.client.request(method, AUTH + path, **body)
        assert_auth_problem(response, 401, "authentication_required")


# -- me and sessions ------------------------------------------------------------------------


async def test_me_describes_the_principal(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        user_id = await w.user("alice@example.com", "operator")
        pair = await w.login("alice@example.com")
        response = await w.client.get(f"{AUTH}/me", headers=bearer(pair["access_token"]))
        assert response.status_code == 200
        assert_no_store(response)
        me = response.json()
        sessions = await w.service.store.sessions(user_id)
        assert me == {
            "id": user_id,
            "username": "alice@example.com",
            "roles": ["operator"],
            "scopes": [],
            "mfa": False,
            "session_id": sessions[0].id,
            "method": "bearer",
        }


async def test_sessions_are_listed_and_revoked_by_their_owner_only(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        await w.user("bob@example.com")
        phone = await w.login("alice@example.com")
        laptop = await w.login("alice@example.com")
        bob = await w.login("bob@example.com")

        listed = await w.client.get(f"{AUTH}/sessions", headers=bearer(laptop["access_token"]))
        assert listed.status_code == 200
        sessions = listed.json()["sessions"]
        assert len(sessions) == 2
        assert sum(session["current"] for session in sessions) == 1
        for session in sessions:
            assert session["client_ip"] == "203.0.113.9"
            assert {"id", "created_at", "last_seen_at", "expires_at", "mfa"} <= set(session)
        other = next(session["id"] for session in sessions if not session["current"])

        bobs = await w.client.get(f"{AUTH}/sessions", headers=bearer(bob["access_token"]))
        bob_session = bobs.json()["sessions"][0]["id"]
        stranger = await w.client.delete(
            f"{AUTH}/sessions/{bob_session}", headers=bearer(laptop["access_token"])
        )
        assert_problem(stranger, 404, "not_found")
        assert (await w.client.get(f"{AUTH}/me", headers=bearer(bob["access_token"]))).is_success

        revoked = await w.client.delete(
            f"{AUTH}/sessions/{other}", headers=bearer(laptop["access_token"])
        )
        assert revoked.status_code == 204
        dead = await w.client.get(f"{AUTH}/me", headers=bearer(phone["access_token"]))
        assert_auth_problem(dead, 401, "invalid_token")
        again = await w.client.delete(
            f"{AUTH}/sessions/{other}", headers=bearer(laptop["access_token"])
        )
        assert_problem(again, 404, "not_found")


# -- MFA --------------------------------------------------------------------------------------


async def test_mfa_enrolment_over_http(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        headers = bearer((await w.login("alice@example.com"))["access_token"])
        setup = await w.client.post(f"{AUTH}/mfa/setup", headers=headers)
        assert setup.status_code == 200, setup.text
        assert_no_store(setup)
        enrolment = setup.json()
        assert enrolment["otpauth_uri"].startswith("otpauth://totp/")
        assert base64.b64decode(enrolment["qr_png"], validate=True).startswith(PNG_SIGNATURE)
        assert "<svg" in enrolment["qr_svg"]
        codes = enrolment["backup_codes"]
        assert len(codes) == 10
        assert len(set(codes)) == 10
        secret = enrolment["secret"]

        wrong = await w.client.post(f"{AUTH}/mfa/verify", headers=headers, json={"otp": "000000"})
        assert_auth_problem(wrong, 401, "invalid_credentials")
        no_otp = await w.client.post(f"{AUTH}/mfa/verify", headers=headers, json={})
        assert_problem(no_otp, 400, "bad_request")
        code = w.service.totp.code_at(secret, time.time())
        verified = await w.client.post(f"{AUTH}/mfa/verify", headers=headers, json={"otp": code})
        assert verified.status_code == 200, verified.text
        assert verified.json() == {"mfa": True}
        twice = await w.client.post(f"{AUTH}/mfa/setup", headers=headers)
        assert_problem(twice, 409, "conflict")

        credentials = {"username": "alice@example.com", "password": PASSWORD}
        required = await w.client.post(LOGIN, json=credentials)
        assert_auth_problem(required, 401, "mfa_required")
        later = w.service.totp.code_at(secret, time.time() + w.service.config.mfa.period)
        with_otp = await w.client.post(LOGIN, json={**credentials, "otp": later})
        assert with_otp.status_code == 200, with_otp.text
        mfa_headers = bearer(with_otp.json()["access_token"])
        me = await w.client.get(f"{AUTH}/me", headers=mfa_headers)
        assert me.json()["mfa"] is True
        wrong_otp = await w.client.post(LOGIN, json={**credentials, "otp": "000000"})
        assert_auth_problem(wrong_otp, 401, "invalid_credentials")

        bad_disable = await w.client.post(
            f"{AUTH}/mfa/disable", headers=mfa_headers, json={"otp": "000000"}
        )
        assert_auth_problem(bad_disable, 401, "invalid_credentials")
        disabled = await w.client.post(
            f"{AUTH}/mfa/disable", headers=mfa_headers, json={"otp": codes[0]}
        )
        assert disabled.status_code == 200, disabled.text
        assert disabled.json() == {"mfa": False}
        assert (await w.client.post(LOGIN, json=credentials)).status_code == 200


async def test_an_api_key_cannot_change_mfa_or_end_sessions(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        await w.user("alice@example.com")
        await w.login("alice@example.com")
        key = {"X-API-Key": (await w.admin.create_api_key("alice@example.com")).key}
        me = await w.client.get(f"{AUTH}/me", headers=key)
        assert me.status_code == 200
        assert me.json()["method"] == "api_key"
        assert me.json()["session_id"] is None
        user = await w.service.store.user_by_name("alice@example.com")
        assert user is not None
        [session_record] = await w.service.store.sessions(user.id)
        session = {"id": session_record.id}
        for method, path in [
            ("GET", "/sessions"),
            ("POST", "/mfa/setup"),
            ("POST", "/mfa/verify"),
            ("POST", "/mfa/disable"),
            ("DELETE", f"/sessions/{session['id']}"),
        ]:
            body = {"json": {"otp": "1"}} if method == "POST" else {}
            response = await w.client.request(method, AUTH + path, headers=key, **body)
            assert_problem(response, 403, "permission_denied")
        user = await w.service.store.user_by_name("alice@example.com")
        assert user is not None
        assert user.mfa_secret is None
        assert len(await w.service.store.sessions(user.id)) == 1


# -- methods, paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", f"{AUTH}/login", "POST"),
        ("PUT", f"{AUTH}/refresh", "POST"),
        ("GET", f"{AUTH}/logout", "POST"),
        ("POST", f"{AUTH}/me", "GET"),
        ("DELETE", f"{AUTH}/sessions", "GET"),
        ("GET", f"{AUTH}/sessions/abc", "DELETE"),
        ("GET", f"{AUTH}/mfa/setup", "POST"),
        ("POST", JWKS, "GET, HEAD"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    tmp_path: Path, method: str, path: str, allow: str
) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        response = await w.client.request(method, path)
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "path",
    [f"{AUTH}/x", f"{AUTH}/login/x", f"{AUTH}/mfa", f"{AUTH}/sessions/a/b", "/_bastion/authx"],
)
async def test_unknown_endpoints_are_404(tmp_path: Path, path: str) -> None:
    async with wrapped(tmp_path, make_app()) as w:
        assert_problem(await w.client.get(path), 404, "not_found")


# -- JWKS -------------------------------------------------------------------------------------


async def test_jwks_publishes_public_keys_an_upstream_verifies_with(tmp_path: Path) -> None:
    auth = auth_config(tokens=TokenConfig(jwks_paths=["/.well-known/jwks.json"]))
    async with wrapped(tmp_path, make_app(), auth) as w:
        await w.user("alice@example.com", "viewer")
        access = (await w.login("alice@example.com"))["access_token"]
        published = await w.client.get(JWKS)
        assert published.status_code == 200
        assert published.headers["content-type"] == "application/json"
        extra = await w.client.get("/.well-known/jwks.json")
        assert extra.status_code == 200
        assert extra.json() == published.json()

        keys = published.json()["keys"]
        assert keys
        for key in keys:
            assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
                "OKP",
                "Ed25519",
                "EdDSA",
                "sig",
            )
            assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key), key
        header = jwt.get_unverified_header(access)
        assert header["typ"] == "at+jwt"
        jwk = next(key for key in keys if key["kid"] == header["kid"])
        claims = jwt.decode(
            access,
            jwt.PyJWK(jwk).key,
            algorithms=["EdDSA"],
            audience="bastion",
            issuer="bastion",
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        user = await w.service.store.user_by_name("alice@example.com")
        assert user is not None
        assert claims["sub"] == user.id
        assert claims["roles"] == ["viewer"]
        # A token changed after signing fails the upstream's own check too.
        tampered = access[:-6] + ("AAAAAA" if not access.endswith("AAAAAA") else "BBBBBB")
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(tampered, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience="bastion")

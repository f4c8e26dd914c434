"""Attacks on the identity capability's edges, each a row or a test that must keep failing:
racing the login throttle, path spellings around route rules, foreign key headers, taking over
the second factor with a stolen token, stale cache entries, hashing floods, endless sessions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from auth.http_harness import assert_auth_problem, bearer, wrapped
from auth.service_harness import (
    CONTEXT,
    PASSWORD,
    auth_config,
    make_user,
    running_service,
)
from bastion.audit.events import MemoryAuditSink
from bastion.auth.admin import IdentityAdmin
from bastion.auth.config import AccessRule, ThrottleConfig, TokenConfig
from bastion.auth.enrolment import MfaEnrolment
from bastion.auth.errors import AuthError
from bastion.auth.passwords import HasherBusy
from bastion.http.problems import BastionError
from manual_clock import ManualClock

AUTH = "/_bastion/auth"


async def _echo(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "headers": dict(request.headers)})


def _app() -> Starlette:
    return Starlette(routes=[Route("/{rest:path}", _echo, methods=["GET", "POST"])])


# -- the throttle cannot be raced ---------------------------------------------------------------


async def test_simultaneous_guesses_get_only_the_allowed_password_checks(database_url: str) -> None:
    # The block outlasts the test however slowly the store serialises the attempts, so the
    # count does not depend on the machine's speed (a 1 s block could expire mid-race and let
    # the next attempt through, as the doubling backoff intends).
    throttle = ThrottleConfig(base_delay=3600.0)
    async with running_service(database_url, config=auth_config(throttle=throttle)) as service:
        await make_user(service)

        async def attempt(password: str) -> str:
            try:
                await service.login("alice@example.com", password, None, CONTEXT)
            except AuthError as exc:
                return exc.code
            return "ok"

        guesses = [f"wrong guess {n:03d}" for n in range(30)]
        outcomes = await asyncio.gather(*(attempt(guess) for guess in guesses))
        # Five attempts reach a password check, however many arrive at once.
        assert outcomes.count("invalid_credentials") == 5, outcomes
        assert outcomes.count("login_throttled") == len(guesses) - 5
        # The right password is refused too, unchecked, until the block ends.
        assert await attempt(PASSWORD) == "login_throttled"


async def test_a_right_password_takes_back_its_counted_attempt(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        # Many successful logins from one address never add up to a block of that address.
        for _ in range(25):
            assert await service.login("alice@example.com", PASSWORD, None, CONTEXT)


# -- route rules see every spelling of the path -------------------------------------------------

_RULES = [
    AccessRule(path="/api/*/orders", require="orders:read"),
    AccessRule(path="/admin", require="admin:*"),
]


@pytest.mark.parametrize(
    ("id_", "path"),
    [
        ("encoded-slash-in-segment", "/api/a%2Fb/orders"),
        ("encoded-backslash-in-segment", "/api/a%5Cb/orders"),
        ("trailing-slash", "/admin/"),
        ("upper-case", "/ADMIN"),
        ("mixed-case", "/Admin"),
        ("double-slash", "//admin"),
        ("backslash", "/admin\\"),
    ],
)
async def test_path_spellings_cannot_bypass_a_rule(tmp_path: Path, id_: str, path: str) -> None:
    async with wrapped(tmp_path, _app(), auth_config(rules=_RULES)) as w:
        response = await w.client.get("http://testserver" + path)
        assert_auth_problem(response, 401, "authentication_required")


async def test_plain_paths_outside_the_rules_stay_open(tmp_path: Path) -> None:
    async with wrapped(tmp_path, _app(), auth_config(rules=_RULES)) as w:
        for path in ("/api/a/b/orders", "/administrator", "/public/Admin"):
            assert (await w.client.get(path)).status_code == 200, path


# -- only bst_ values are Bastion's API keys ------------------------------------------------------


async def test_an_upstreams_own_api_key_passes_untouched(tmp_path: Path) -> None:
    async with wrapped(tmp_path, _app()) as w:
        response = await w.client.get("/open", headers={"X-API-Key": "upstream-own-key-123"})
        assert response.status_code == 200
        assert response.json()["headers"]["x-api-key"] == "upstream-own-key-123"
        token = await w.token("alice@example.com")
        both = {**bearer(token), "X-API-Key": "upstream-own-key-123"}
        assert (await w.client.get("/open", headers=both)).status_code == 200


# -- the second factor needs more than a stolen token -------------------------------------------


async def test_mfa_setup_needs_a_recent_login_or_the_password(database_url: str) -> None:
    config = auth_config(mfa={"reauth_window": 0.5})
    async with running_service(database_url, config=config) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        principal = await service.authenticate_bearer(pair.access_token)
        await asyncio.sleep(0.6)  # the login is no longer recent
        enrolment = MfaEnrolment(service)
        with pytest.raises(AuthError) as stale:
            await enrolment.setup(principal, CONTEXT)
        assert (stale.value.code, stale.value.status) == ("reauthentication_required", 403)
        with pytest.raises(AuthError) as wrong:
            await enrolment.setup(principal, CONTEXT, password="not the password")
        assert wrong.value.code == "invalid_credentials"
        setup = await enrolment.setup(principal, CONTEXT, password=PASSWORD)
        assert setup["otpauth_uri"].startswith("otpauth://")


async def test_wrong_codes_on_mfa_endpoints_are_throttled(database_url: str) -> None:
    # The block outlasts the test: a 1 s block could end between slow attempts and let the
    # sixth code be checked.
    config = auth_config(throttle=ThrottleConfig(base_delay=3600.0))
    async with running_service(database_url, config=config) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        principal = await service.authenticate_bearer(pair.access_token)
        enrolment = MfaEnrolment(service)
        await enrolment.setup(principal, CONTEXT)
        codes = []
        for _ in range(7):
            try:
                await enrolment.verify(principal, "000000", CONTEXT)
            except AuthError as exc:
                codes.append(exc.code)
        assert codes == ["invalid_credentials"] * 5 + ["login_throttled"] * 2


async def test_setup_cannot_replace_the_codes_of_an_enabled_account(database_url: str) -> None:
    async with running_service(database_url) as service:
        user_id = await make_user(service)
        assert await service.store.set_mfa_secret(user_id, key_id="k", blob=b"x", code_hashes=[])
        await service.store.enable_mfa(user_id)
        stored = await service.store.set_mfa_secret(
            user_id, key_id="k2", blob=b"y", code_hashes=["a" * 64]
        )
        assert stored is False
        user = await service.store.user(user_id)
        assert user is not None
        assert user.mfa_key_id == "k"


# -- caches never outlive what they cached -------------------------------------------------------


async def test_a_change_during_verification_is_not_cached_over(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        read_session = service.store.session

        async def revoked_while_reading(session_id: str) -> Any:
            record = await read_session(session_id)  # the state before the logout
            await service.store.revoke_sessions([session_id], reason="logout")
            service._on_change("session", session_id)  # what the feed delivers meanwhile
            return record

        service.store.session = revoked_while_reading  # type: ignore[method-assign]
        await service.authenticate_bearer(pair.access_token)
        service.store.session = read_session  # type: ignore[method-assign]
        assert service.credentials.get(pair.access_token) is None
        with pytest.raises(AuthError):
            await service.authenticate_bearer(pair.access_token)


async def test_a_late_committed_change_is_still_applied(database_url: str) -> None:
    async with running_service(database_url) as service:
        await service.store.announce("user", "someone")
        # A higher id was already seen: the row committed "late", below it.
        service.feed._last_id += 1000
        seen: list[tuple[str, str]] = []
        service.feed._listener = lambda kind, subject: seen.append((kind, subject))
        assert await service.feed.poll() == 1
        assert seen == [("user", "someone")]
        assert await service.feed.poll() == 0  # applied once


async def test_tokens_of_a_retired_signing_key_leave_the_cache(database_url: str) -> None:
    config = auth_config(tokens=TokenConfig(keep_signing_keys=1))
    async with running_service(database_url, config=config) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        await service.authenticate_bearer(pair.access_token)
        await IdentityAdmin(service).rotate_signing()
        with pytest.raises(AuthError) as refused:
            await service.authenticate_bearer(pair.access_token)
        assert refused.value.code == "invalid_token"


# -- floods and lifetimes -----------------------------------------------------------------------


async def test_a_hashing_backlog_answers_overloaded(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)

        async def busy(stored: str | None, password: str) -> bool:
            raise HasherBusy("full")

        service.hasher.verify = busy  # type: ignore[method-assign]
        with pytest.raises(BastionError) as refused:
            await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert (refused.value.code, refused.value.status) == ("overloaded", 503)
        assert refused.value.headers["Retry-After"] == "1"


async def test_the_hasher_refuses_beyond_its_backlog() -> None:
    from bastion.auth.config import PasswordConfig
    from bastion.auth.passwords import PasswordHasher

    hasher = PasswordHasher(PasswordConfig(time_cost=1, memory_cost_kib=8192, max_pending=2))
    try:
        results = await asyncio.gather(
            *(hasher.verify(None, "password guess") for _ in range(6)), return_exceptions=True
        )
        assert sum(isinstance(result, HasherBusy) for result in results) == 4
        assert await hasher.verify(None, "later") is False  # the backlog drained
    finally:
        hasher.close()


async def test_sessions_end_at_their_absolute_lifetime(database_url: str) -> None:
    # A hand-moved clock: with a real one, a slow login and refresh could outlast a short
    # lifetime before the refresh that must still work. It starts at the real time, so rows
    # the database stamps itself stay comparable.
    clock = ManualClock(time.time())
    config = auth_config(tokens=TokenConfig(session_max_age=60.0))
    async with running_service(database_url, config=config, clock=clock) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        clock.advance(59)
        pair = await service.refresh(pair.refresh_token, CONTEXT)
        clock.advance(2)
        with pytest.raises(AuthError) as ended:
            await service.refresh(pair.refresh_token, CONTEXT)
        assert ended.value.code == "invalid_token"


async def test_audit_events_never_carry_the_typed_username(database_url: str) -> None:
    audit = MemoryAuditSink()
    async with running_service(database_url, audit=audit) as service:
        typed = "my-secret-password-typed-as-username"
        for _ in range(6):
            with pytest.raises(AuthError):
                await service.login(typed, "whatever", None, CONTEXT)
        assert {"auth.login.failed", "auth.login.lockout"} <= set(audit.kinds())
        for event in audit.events:
            assert typed not in repr(event)
            if event.kind.startswith("auth.login."):
                assert len(event.detail["username_hash"]) == 16

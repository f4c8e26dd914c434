"""The identity service end to end over SQLite and PostgreSQL: logins, throttling, refresh
rotation and reuse, logout, account status, API keys, MFA and cross-instance revocation."""

from __future__ import annotations

import asyncio
import time

import pytest

from auth.service_harness import CONTEXT, PASSWORD, auth_config, make_user, running_service
from bastion.audit.events import MemoryAuditSink
from bastion.auth.admin import IdentityAdmin
from bastion.auth.changes import CHANNEL
from bastion.auth.config import ThrottleConfig
from bastion.auth.enrolment import MfaEnrolment
from bastion.auth.errors import AuthError
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.problems import BastionError

PATIENCE = 30.0
"""How long a test waits for another instance to learn of a change: only a change that never
arrives fails, not a slow machine."""


async def _code(service: IdentityService, secret: str, offset: int = 0) -> str:
    return service.totp.code_at(secret, time.time() + offset * service.config.mfa.period)


async def test_login_issues_a_working_token_pair(database_url: str) -> None:
    audit = MemoryAuditSink()
    async with running_service(database_url, audit=audit) as service:
        user_id = await make_user(service, "Alice@Example.com", roles=("viewer",))
        pair = await service.login(
            "\uff21\uff2c\uff29\uff23\uff25@example.com", PASSWORD, None, CONTEXT
        )
        assert pair.body()["token_type"] == "Bearer"
        assert pair.body()["expires_in"] == 900
        principal = await service.authenticate_bearer(pair.access_token)
        assert principal.subject == user_id
        assert principal.username == "alice@example.com"
        assert principal.roles == ("viewer",)
        assert principal.session_id == pair.session_id
        assert "auth.login.succeeded" in audit.kinds()


@pytest.mark.parametrize("username", ["alice@example.com", "nobody@example.com"])
async def test_wrong_password_and_unknown_user_answer_the_same(
    database_url: str, username: str
) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        with pytest.raises(AuthError) as failure:
            await service.login(username, "wrong password 123", None, CONTEXT)
        assert (failure.value.code, failure.value.status) == ("invalid_credentials", 401)
        assert failure.value.detail == "Invalid username or password"
        assert failure.value.headers["WWW-Authenticate"].startswith("Bearer")


# Throttle tests use a block that outlasts the test: a 1 s block could end between slow
# attempts and let a sixth password be checked.
LASTING_BLOCK = auth_config(throttle=ThrottleConfig(base_delay=3600.0))


async def test_throttle_treats_unknown_and_real_usernames_alike(database_url: str) -> None:
    async with running_service(database_url, config=LASTING_BLOCK) as service:
        await make_user(service)
        outcomes: dict[str, list[str]] = {}
        for username in ("alice@example.com", "ghost@example.com"):
            seen = []
            for _ in range(7):
                try:
                    await service.login(username, "not the password", None, CONTEXT)
                except AuthError as exc:
                    seen.append(exc.code)
            outcomes[username] = seen
        expected = ["invalid_credentials"] * 5 + ["login_throttled"] * 2
        assert outcomes["alice@example.com"] == expected
        assert outcomes["ghost@example.com"] == expected


async def test_throttled_login_carries_retry_after_and_spares_other_addresses(
    database_url: str,
) -> None:
    async with running_service(database_url, config=LASTING_BLOCK) as service:
        await make_user(service)
        for _ in range(5):
            with pytest.raises(AuthError):
                await service.login("alice@example.com", "bad password!", None, CONTEXT)
        with pytest.raises(AuthError) as throttled:
            await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert throttled.value.code == "login_throttled"
        assert throttled.value.status == 429
        assert int(throttled.value.headers["Retry-After"]) >= 1
        assert throttled.value.extensions["retry_after"] >= 1
        # The real user, from another address, is not locked out.
        elsewhere = RequestContext(client_ip="203.0.113.9")
        assert (await service.login("alice@example.com", PASSWORD, None, elsewhere)).access_token


async def test_refresh_rotates_and_reuse_revokes_the_family(database_url: str) -> None:
    audit = MemoryAuditSink()
    async with running_service(database_url, audit=audit) as service:
        await make_user(service)
        first = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        second = await service.refresh(first.refresh_token, CONTEXT)
        assert second.refresh_token != first.refresh_token
        assert second.session_id == first.session_id
        await service.authenticate_bearer(second.access_token)
        with pytest.raises(AuthError) as reused:
            await service.refresh(first.refresh_token, CONTEXT)
        assert reused.value.code == "token_reused"
        assert 'error="invalid_token"' in reused.value.headers["WWW-Authenticate"]
        assert "auth.token.reused" in audit.kinds()
        # The whole family is dead: the newest refresh token and its access token too.
        with pytest.raises(AuthError) as dead:
            await service.refresh(second.refresh_token, CONTEXT)
        assert dead.value.code == "invalid_token"
        with pytest.raises(AuthError):
            await service.authenticate_bearer(second.access_token)


@pytest.mark.parametrize(
    "token",
    ["", "bst_rt_short", "bst_rt_" + "x" * 43, "eyJhbGciOiJub25lIn0.e30.", "random"],
    ids=["empty", "short", "unknown", "jwt-when-opaque", "garbage"],
)
async def test_unusable_refresh_tokens_are_invalid(database_url: str, token: str) -> None:
    async with running_service(database_url) as service:
        with pytest.raises(AuthError) as failure:
            await service.refresh(token, CONTEXT)
        assert failure.value.code == "invalid_token"


async def test_jwt_refresh_tokens_rotate_too(database_url: str) -> None:
    config = auth_config(tokens={"refresh_format": "jwt"})
    async with running_service(database_url, config=config) as service:
        await make_user(service)
        first = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert first.refresh_token.count(".") == 2
        second = await service.refresh(first.refresh_token, CONTEXT)
        with pytest.raises(AuthError) as reused:
            await service.refresh(first.refresh_token, CONTEXT)
        assert reused.value.code == "token_reused"
        # A refresh token is not an access token, and the reverse.
        with pytest.raises(AuthError):
            await service.authenticate_bearer(second.refresh_token)
        with pytest.raises(AuthError):
            await service.refresh(second.access_token, CONTEXT)


async def test_logout_ends_the_session(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        principal = await service.authenticate_bearer(pair.access_token)
        await service.logout(principal, CONTEXT)
        with pytest.raises(AuthError):
            await service.authenticate_bearer(pair.access_token)
        with pytest.raises(AuthError):
            await service.refresh(pair.refresh_token, CONTEXT)


async def test_sessions_are_listed_and_revocable_by_their_owner_only(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        await make_user(service, "bob@example.com")
        one = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        two = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        bob = await service.login("bob@example.com", PASSWORD, None, CONTEXT)
        alice = await service.authenticate_bearer(one.access_token)
        listed = await service.sessions(alice)
        assert {row["id"] for row in listed} == {one.session_id, two.session_id}
        assert [row["current"] for row in listed if row["id"] == one.session_id] == [True]
        assert not await service.revoke_session(alice, bob.session_id, CONTEXT)
        assert await service.revoke_session(alice, two.session_id, CONTEXT)
        with pytest.raises(AuthError):
            await service.authenticate_bearer(two.access_token)
        await service.authenticate_bearer(bob.access_token)


@pytest.mark.parametrize(
    ("status", "code"), [("suspended", "account_suspended"), ("disabled", "account_disabled")]
)
async def test_account_status_is_checked_on_every_request(
    database_url: str, status: str, code: str
) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        await service.authenticate_bearer(pair.access_token)
        await IdentityAdmin(service).set_status("alice@example.com", status)
        with pytest.raises(AuthError) as refused:
            await service.authenticate_bearer(pair.access_token)
        assert refused.value.code in (code, "invalid_token")
        with pytest.raises(AuthError) as login:
            await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert (login.value.code, login.value.status) == (code, 403)
        await IdentityAdmin(service).set_status("alice@example.com", "active")
        assert await service.login("alice@example.com", PASSWORD, None, CONTEXT)


async def test_suspension_keeps_sessions_but_refuses_them(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        await IdentityAdmin(service).set_status("alice@example.com", "suspended")
        with pytest.raises(AuthError) as refused:
            await service.authenticate_bearer(pair.access_token)
        assert refused.value.code == "account_suspended"
        await IdentityAdmin(service).set_status("alice@example.com", "active")
        assert (await service.authenticate_bearer(pair.access_token)).username


async def test_admin_revoke_sessions_and_password_change_end_every_token(
    database_url: str,
) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        admin = IdentityAdmin(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert await admin.revoke_sessions("alice@example.com") == 1
        with pytest.raises(AuthError):
            await service.authenticate_bearer(pair.access_token)
        # A login right after the revocation (same second) is valid.
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        await service.authenticate_bearer(pair.access_token)
        await admin.set_password("alice@example.com", "a completely new passphrase")
        with pytest.raises(AuthError):
            await service.authenticate_bearer(pair.access_token)
        with pytest.raises(AuthError):
            await service.login("alice@example.com", PASSWORD, None, CONTEXT)


async def test_weak_passwords_and_duplicate_users_are_refused(database_url: str) -> None:
    async with running_service(database_url) as service:
        admin = IdentityAdmin(service)
        with pytest.raises(BastionError) as weak:
            await admin.create_user("carol@example.com", "password")
        assert weak.value.code == "password_rejected"
        assert weak.value.extensions["errors"]
        await admin.create_user("carol@example.com", PASSWORD)
        with pytest.raises(BastionError) as duplicate:
            await admin.create_user("CAROL@example.com", PASSWORD)
        assert duplicate.value.code == "conflict"
        with pytest.raises(BastionError) as role:
            await admin.create_user("dave@example.com", PASSWORD, roles=["wizard"])
        assert role.value.code == "bad_request"


async def test_rehash_on_login_when_parameters_change(database_url: str) -> None:
    async with running_service(database_url) as service:
        user_id = await make_user(service)
        before = (await service.store.user(user_id)).password_hash  # type: ignore[union-attr]
    stronger = auth_config(passwords={"time_cost": 2, "memory_cost_kib": 8192})
    async with running_service(database_url, config=stronger) as service:
        await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        after = (await service.store.user(user_id)).password_hash  # type: ignore[union-attr]
        assert after != before
        assert not service.hasher.needs_rehash(after)  # type: ignore[arg-type]
        assert await service.login("alice@example.com", PASSWORD, None, CONTEXT)


async def test_api_keys_authenticate_until_revoked(database_url: str) -> None:
    audit = MemoryAuditSink()
    async with running_service(database_url, audit=audit) as service:
        await make_user(service, roles=("operator",))
        admin = IdentityAdmin(service)
        created = await admin.create_api_key("alice@example.com", name="ci", scopes=["orders:read"])
        principal = await service.authenticate_api_key(created.key)
        assert principal.method == "api_key"
        assert principal.scopes == ("orders:read",)
        assert principal.roles == ("operator",)
        assert not service.authorizer.allows(
            roles=principal.roles, required="orders:write", scopes=principal.scopes
        )
        await service.flush_usage()
        [(stored, owner)] = await admin.api_keys()
        assert owner == "alice@example.com"
        assert stored.last_used_at is not None
        assert await admin.revoke_api_key(created.id)
        with pytest.raises(AuthError) as revoked:
            await service.authenticate_api_key(created.key)
        assert revoked.value.code == "invalid_token"
        assert {"admin.key.created", "admin.key.revoked"} <= set(audit.kinds())


async def test_expired_and_malformed_api_keys_are_refused(database_url: str) -> None:
    async with running_service(database_url) as service:
        await make_user(service)
        created = await IdentityAdmin(service).create_api_key("alice@example.com", expires_in=1)
        typo = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
        for key in (typo, "bst_", "bst_" + "a" * 38):
            with pytest.raises(AuthError):
                await service.authenticate_api_key(key)
        await asyncio.sleep(1.1)
        with pytest.raises(AuthError) as expired:
            await service.authenticate_api_key(created.key)
        assert expired.value.detail == "The API key has expired"


async def test_mfa_enrolment_login_replay_and_backup_codes(database_url: str) -> None:
    audit = MemoryAuditSink()
    async with running_service(database_url, audit=audit) as service:
        await make_user(service)
        enrolment = MfaEnrolment(service)
        pair = await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        principal = await service.authenticate_bearer(pair.access_token)
        setup = await enrolment.setup(principal, CONTEXT)
        assert setup["otpauth_uri"].startswith("otpauth://totp/")
        assert setup["qr_svg"].lstrip().startswith(("<?xml", "<svg"))
        assert len(setup["backup_codes"]) == 10
        with pytest.raises(AuthError):
            await enrolment.verify(principal, "000000", CONTEXT)
        code = await _code(service, setup["secret"])
        await enrolment.verify(principal, code, CONTEXT)
        with pytest.raises(AuthError) as required:
            await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert required.value.code == "mfa_required"
        # The code that confirmed enrolment cannot be replayed; the next step's code works once.
        with pytest.raises(AuthError):
            await service.login("alice@example.com", PASSWORD, code, CONTEXT)
        later = await _code(service, setup["secret"], offset=1)
        mfa_pair = await service.login("alice@example.com", PASSWORD, later, CONTEXT)
        assert (await service.authenticate_bearer(mfa_pair.access_token)).extra["mfa"] is True
        with pytest.raises(AuthError):
            await service.login("alice@example.com", PASSWORD, later, CONTEXT)
        backup = setup["backup_codes"][0]
        assert await service.login("alice@example.com", PASSWORD, backup, CONTEXT)
        with pytest.raises(AuthError):
            await service.login("alice@example.com", PASSWORD, backup, CONTEXT)
        await enrolment.disable(principal, setup["backup_codes"][1], CONTEXT)
        assert await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        assert {"auth.mfa.setup", "auth.mfa.enabled", "auth.mfa.disabled"} <= set(audit.kinds())


async def test_revocation_reaches_another_instance_through_the_database(
    database_url: str,
) -> None:
    slow = auth_config(revocation_poll=1.0)
    async with (
        running_service(database_url, config=slow) as first,
        running_service(database_url, config=slow) as second,
    ):
        await make_user(first)
        pair = await first.login("alice@example.com", PASSWORD, None, CONTEXT)
        principal = await second.authenticate_bearer(pair.access_token)  # cached on second
        await first.logout(principal, CONTEXT)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                await second.authenticate_bearer(pair.access_token)
            except AuthError:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the other instance kept accepting a revoked session")


async def test_revocation_reaches_another_instance_through_redis(
    database_url: str, clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        running_service(database_url, redis_url=clean_redis_url) as first,
        running_service(database_url, redis_url=clean_redis_url) as second,
    ):

        async def no_poll() -> int:
            return 0

        # The second instance reads nothing from the database: only the Redis message can
        # reach it, however long the test waits.
        monkeypatch.setattr(second.feed, "poll", no_poll)
        await make_user(first)
        pair = await first.login("alice@example.com", PASSWORD, None, CONTEXT)
        # Its subscription is up once a message gets through (one sent before would be lost,
        # which the poll covers in production but not here).
        generation = second.accounts.generation
        deadline = time.monotonic() + PATIENCE
        while second.accounts.generation == generation:
            assert time.monotonic() < deadline, f"nothing arrived on {CHANNEL}"
            await first.announce("user", "no-such-user")
            await asyncio.sleep(0.05)
        principal = await second.authenticate_bearer(pair.access_token)
        assert second.credentials.get(pair.access_token) is not None  # cached on second
        await first.logout(principal, CONTEXT)
        deadline = time.monotonic() + PATIENCE
        while second.credentials.get(pair.access_token) is not None:
            assert time.monotonic() < deadline, "the revocation did not arrive"
            await asyncio.sleep(0.01)

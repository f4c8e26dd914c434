"""Identity across real processes: two ``bastion serve`` instances sharing one PostgreSQL
database and one Redis behave as one — refresh-token reuse, logout and the identity headers the
upstream receives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from auth.http_harness import assert_auth_problem, bearer
from auth.service_harness import PASSWORD, auth_config, make_user, running_service
from e2e.processes import Processes, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

USERNAME = "alice@example.com"
PATIENCE = 30.0
"""How long a revocation may take to reach the other instance here: the contract is within a
second, but on a slow machine only a revocation that never arrives should fail a test."""
LOGIN = "/_bastion/auth/login"
REFRESH = "/_bastion/auth/refresh"

# Fast hashing (the flows are under test, not the hash) and the same parameters the test's own
# service uses to create the user, so no instance rehashes on login.
CONFIG = """
[auth.passwords]
time_cost = 1
memory_cost_kib = 8192
"""


@dataclass
class Pair:
    """Two gateways over one database and one Redis, and the id of the user they share."""

    a: httpx.AsyncClient
    b: httpx.AsyncClient
    user_id: str
    gateways: tuple[ServerProcess, ServerProcess]


@pytest.fixture
async def pair(
    processes: Processes, postgres_database_url: str, clean_redis_url: str
) -> AsyncIterator[Pair]:
    # The user is created through the identity service against the same database; this also
    # migrates it and creates the signing keys both instances then load.
    async with running_service(postgres_database_url, config=auth_config()) as service:
        user_id = await make_user(service, USERNAME, roles=("viewer",))
    demo = processes.demo()
    env = {
        "BASTION_STORE__DATABASE_URL": postgres_database_url,
        "BASTION_STORE__REDIS_URL": clean_redis_url,
    }
    first = processes.bastion("--upstream", demo.url, config=CONFIG, env=env)
    second = processes.bastion("--upstream", demo.url, config=CONFIG, env=env)
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as a,
        httpx.AsyncClient(base_url=second.url, timeout=10) as b,
    ):
        yield Pair(a, b, user_id, (first, second))
    for gateway in (first, second):
        output = gateway.stop()
        assert "Traceback" not in output, output


async def _login(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post(LOGIN, json={"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


async def _refused_within(client: httpx.AsyncClient, token: str, seconds: float) -> float:
    """Poll ``/me`` with ``token`` until it is refused; how long that took."""
    started = time.monotonic()
    while True:
        response = await client.get("/_bastion/auth/me", headers=bearer(token))
        elapsed = time.monotonic() - started
        if response.status_code == 401:
            assert_auth_problem(response, 401, "invalid_token")
            return elapsed
        assert response.status_code == 200, response.text
        assert elapsed < seconds, f"still accepted {elapsed:.2f}s after the revocation"
        await asyncio.sleep(0.02)


async def test_refresh_reuse_on_one_instance_revokes_the_family_on_both(pair: Pair) -> None:
    first = await _login(pair.a)
    rotated = await pair.a.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    newest = rotated.json()
    # Both instances accept the rotated pair's access token.
    for client in (pair.a, pair.b):
        me = await client.get("/_bastion/auth/me", headers=bearer(newest["access_token"]))
        assert me.status_code == 200
        assert me.json()["id"] == pair.user_id

    reused = await pair.b.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert_auth_problem(reused, 401, "token_reused")
    after = await pair.a.post(REFRESH, json={"refresh_token": newest["refresh_token"]})
    assert_auth_problem(after, 401, "invalid_token")
    for client in (pair.a, pair.b):
        await _refused_within(client, newest["access_token"], PATIENCE)


async def test_logout_on_one_instance_is_honoured_by_the_other(pair: Pair) -> None:
    tokens = await _login(pair.a)
    access = tokens["access_token"]
    # B verifies (and caches) the token before the logout.
    assert (await pair.b.get("/_bastion/auth/me", headers=bearer(access))).status_code == 200
    out = await pair.a.post("/_bastion/auth/logout", headers=bearer(access))
    assert out.status_code == 204
    await _refused_within(pair.b, access, PATIENCE)
    refresh = await pair.b.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert_auth_problem(refresh, 401, "invalid_token")


def _received(response: httpx.Response) -> list[tuple[str, str]]:
    """The headers the demo upstream received, as sent (lower-cased names)."""
    assert response.status_code == 200, response.text
    return [(name.lower(), value) for name, value in response.json()["raw_headers"]]


async def test_the_upstream_receives_identity_only_from_the_verified_principal(
    pair: Pair,
) -> None:
    spoofed = [
        ("X-Bastion-User", "admin"),
        ("X-Bastion-Roles", "admin"),
        ("X-Bastion-Session", "forged"),
        ("x-bastion-scopes", "*"),
    ]
    anonymous = _received(await pair.b.get("/headers", headers=spoofed))
    assert not [name for name, _ in anonymous if name.startswith("x-bastion-")], anonymous

    tokens = await _login(pair.a)
    me = await pair.a.get("/_bastion/auth/me", headers=bearer(tokens["access_token"]))
    session_id = me.json()["session_id"]
    for client in (pair.a, pair.b):
        headers = [("Authorization", f"Bearer {tokens['access_token']}"), *spoofed]
        seen = _received(await client.get("/headers", headers=headers))
        identity = sorted((name, value) for name, value in seen if name.startswith("x-bastion-"))
        assert identity == [
            ("x-bastion-roles", "viewer"),
            ("x-bastion-scopes", ""),
            ("x-bastion-session", session_id),
            ("x-bastion-user", pair.user_id),
        ]

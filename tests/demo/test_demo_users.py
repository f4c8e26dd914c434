"""``bastion demo``'s users and route rules: created once, documented passwords that pass the
policy, and rules that make the protection visible without overriding an operator's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bastion.auth.config import AccessRule, AuthConfig, PasswordConfig
from bastion.auth.passwords import PasswordPolicy
from bastion.auth.service import RequestContext
from bastion.cli.identity import open_identity
from bastion.demo import create_app
from bastion.demo.runner import (
    DEMO_RULES,
    DEMO_USERS,
    DemoUser,
    demo_settings,
    ensure_demo_users,
)
from bastion.engine import Bastion
from bastion.settings import Settings
from bastion.store.config import StoreConfig

FAST = AuthConfig(passwords=PasswordConfig(time_cost=1, memory_cost_kib=8192))


def settings_in(tmp_path: Path) -> Settings:
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    return demo_settings(Settings(store=store, auth=FAST), tmp_path)


@pytest.mark.parametrize("user", DEMO_USERS, ids=lambda user: user.username)
def test_demo_passwords_pass_the_default_policy(user: DemoUser) -> None:
    policy = PasswordPolicy(PasswordConfig())
    assert policy.problems(user.password, username=user.username) == []


async def test_demo_users_are_created_once(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert await ensure_demo_users(settings) == []
    assert await ensure_demo_users(settings) == list(DEMO_USERS)
    async with open_identity(settings) as service:
        users = await service.store.users()
        assert [user.username for user in users] == ["admin@demo.local", "viewer@demo.local"]
        for demo_user in DEMO_USERS:
            pair = await service.login(
                demo_user.username, demo_user.password, None, RequestContext(client_ip="127.0.0.1")
            )
            principal = await service.authenticate_bearer(pair.access_token)
            assert principal.roles == (demo_user.role,)


def test_demo_settings_add_rules_and_a_private_database(tmp_path: Path) -> None:
    settings = demo_settings(Settings(), tmp_path)
    assert settings.store.database_url == f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"
    assert settings.auth.rules == list(DEMO_RULES)


def test_demo_settings_keep_the_operators_rules_and_store(tmp_path: Path) -> None:
    own = [AccessRule(path="/api/**", require="api:*")]
    store = StoreConfig(database_url="sqlite+aiosqlite:///elsewhere.db")
    settings = demo_settings(Settings(store=store, auth=AuthConfig(rules=own)), tmp_path)
    assert settings.auth.rules == own
    assert settings.store.database_url == "sqlite+aiosqlite:///elsewhere.db"
    protected = AuthConfig(protect=["/**"])
    assert demo_settings(Settings(auth=protected), tmp_path).auth.rules == []
    disabled = AuthConfig(enabled=False)
    assert demo_settings(Settings(auth=disabled), tmp_path).auth.rules == []


async def test_demo_rules_protect_writes_and_headers(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    await ensure_demo_users(settings)
    app = Bastion(settings).wrap(create_app())
    item = {"name": "lamp", "price": 12.5, "tags": []}
    with TestClient(app) as client:
        tokens = {}
        for user in DEMO_USERS:
            login = client.post(
                "/_bastion/auth/login", json={"username": user.username, "password": user.password}
            )
            assert login.status_code == 200, login.text
            tokens[user.role] = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert client.get("/items").status_code == 200
        assert client.post("/items", json=item).status_code == 401
        assert client.post("/items", json=item, headers=tokens["viewer"]).status_code == 403
        assert client.post("/items", json=item, headers=tokens["admin"]).status_code == 201
        # The rule decides before the upstream routes: refused whatever the method is.
        assert client.delete("/items/1", headers=tokens["viewer"]).status_code == 403
        assert client.post("/orders", json={}, headers=tokens["viewer"]).status_code == 403
        assert client.get("/headers", headers=tokens["viewer"]).status_code == 403
        assert client.get("/headers", headers=tokens["admin"]).status_code == 200
        me = client.get("/_bastion/auth/me", headers=tokens["viewer"])
        assert me.json()["username"] == "viewer@demo.local"

"""An app wrapped by Bastion over a real SQLite store, driven in-process over HTTP, for the
identity tests of the stage, the endpoints and the FastAPI dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from auth.service_harness import PASSWORD, auth_config
from bastion import Bastion, Settings
from bastion.audit.events import MemoryAuditSink
from bastion.auth.admin import IdentityAdmin
from bastion.auth.config import AuthConfig
from bastion.auth.service import IdentityService
from bastion.http.asgi import ASGIApp
from bastion.store.config import StoreConfig
from problem_assertions import assert_problem

LOGIN = "/_bastion/auth/login"


@dataclass
class Wrapped:
    """A running wrapped app: its HTTP client, engine, identity service, admin and audit sink."""

    client: httpx.AsyncClient
    engine: Bastion
    service: IdentityService
    admin: IdentityAdmin
    audit: MemoryAuditSink

    async def user(self, username: str, *roles: str) -> str:
        """Create ``username`` with the harness password and ``roles``; returns its id."""
        return await self.admin.create_user(username, PASSWORD, roles=roles)

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        """Log in over HTTP (must succeed); returns the token pair."""
        response = await self.client.post(LOGIN, json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        pair: dict[str, Any] = response.json()
        return pair

    async def token(self, username: str, *roles: str) -> str:
        """Create ``username`` and return an access token of theirs."""
        await self.user(username, *roles)
        return str((await self.login(username))["access_token"])


@asynccontextmanager
async def wrapped(
    tmp_path: Path, app: ASGIApp, auth: AuthConfig | None = None, **settings: Any
) -> AsyncIterator[Wrapped]:
    """``Bastion(settings).wrap(app)`` over a new SQLite file with fast password hashing.

    Audit events go to a :class:`MemoryAuditSink` handed to ``Bastion(..., audit=...)``.
    """
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}")
    audit = MemoryAuditSink()
    engine = Bastion(Settings(store=store, auth=auth or auth_config(), **settings), audit=audit)
    assert engine.identity is not None
    service = engine.identity.service
    protected = engine.wrap(app)
    await engine.startup()
    transport = httpx.ASGITransport(app=protected, client=("203.0.113.9", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Wrapped(client, engine, service, IdentityAdmin(service), audit)
    finally:
        await engine.shutdown()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_auth_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """:func:`assert_problem`, plus the RFC 6750 challenge every 401 must carry."""
    data = assert_problem(response, status, code)
    challenge = response.headers.get("www-authenticate")
    if status == 401:
        assert challenge is not None, f"401 {code} without WWW-Authenticate"
        assert challenge.startswith('Bearer realm="bastion"'), challenge
        if code in ("invalid_token", "token_reused"):
            assert 'error="invalid_token"' in challenge, challenge
        else:
            assert "error=" not in challenge, challenge
    return data


def headers_of(response: httpx.Response) -> Mapping[str, str]:
    """The request headers the app echoed back (lower-cased names)."""
    seen: dict[str, str] = response.json()["headers"]
    return seen

"""Building identity services over a real database for the identity tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from bastion.audit.events import MemoryAuditSink
from bastion.auth.admin import IdentityAdmin
from bastion.auth.config import AuthConfig, PasswordConfig
from bastion.auth.service import IdentityService, RequestContext
from bastion.observe.metrics import Metrics
from bastion.store.config import StoreConfig
from bastion.store.stores import Stores

FAST_PASSWORDS = PasswordConfig(time_cost=1, memory_cost_kib=8192)
"""Cheap argon2 parameters: the tests exercise the flows, not the hash's cost."""

PASSWORD = "correct horse battery staple"

CONTEXT = RequestContext(client_ip="198.51.100.7", user_agent="pytest", request_id="req-1")


def auth_config(**overrides: Any) -> AuthConfig:
    """An :class:`AuthConfig` with fast password hashing plus ``overrides``."""
    values: dict[str, Any] = {"passwords": FAST_PASSWORDS}
    values.update(overrides)
    return AuthConfig(**values)


@asynccontextmanager
async def running_service(
    database_url: str,
    *,
    config: AuthConfig | None = None,
    redis_url: str = "",
    audit: MemoryAuditSink | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[IdentityService]:
    """A started :class:`IdentityService` over ``database_url`` (migrated), closed after."""
    stores = Stores(StoreConfig(database_url=database_url, redis_url=redis_url))
    await stores.start(migrate=True)
    service = IdentityService(
        config or auth_config(),
        stores=stores,
        metrics=Metrics(),
        audit=audit if audit is not None else MemoryAuditSink(),
        clock=clock,
    )
    try:
        await service.start()
        yield service
    finally:
        await service.close()
        await stores.close()


async def make_user(
    service: IdentityService, username: str = "alice@example.com", roles: tuple[str, ...] = ()
) -> str:
    """Create a user with :data:`PASSWORD`; returns the id."""
    return await IdentityAdmin(service).create_user(username, PASSWORD, roles=roles)

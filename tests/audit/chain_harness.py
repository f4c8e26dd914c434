"""Shared by the audit-log tests: started stores, a filled chain, raw SQL for tampering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text

from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditLog
from bastion.audit.store import AuditStore
from bastion.store.config import StoreConfig
from bastion.store.stores import Stores


@asynccontextmanager
async def started_stores(
    database_url: str, *, key_encryption_key: str | None = None
) -> AsyncIterator[Stores]:
    """Migrated stores over ``database_url``, closed on exit."""
    config = StoreConfig(
        database_url=database_url, timeout=10.0, key_encryption_key=key_encryption_key
    )
    stores = Stores(config)
    await stores.start()
    try:
        yield stores
    finally:
        await stores.close()


def sample_event(number: int, **overrides: Any) -> AuditEvent:
    """A distinct, realistic event (``number`` lands in target and detail)."""
    values: dict[str, Any] = {
        "kind": "auth.login.failed" if number % 2 else "access.denied",
        "outcome": "failure" if number % 2 else "denied",
        "actor": f"user-{number % 3}",
        "target": f"/api/orders/{number}",
        "client_ip": "203.0.113.7",
        "request_id": f"req-{number}",
        "detail": {"number": number, "method": "GET", "nested": {"list": [1, "two", None]}},
    }
    values.update(overrides)
    return AuditEvent(**values)


async def fill(
    stores: Stores, count: int, config: AuditConfig | None = None, *, start: int = 1
) -> AuditLog:
    """Append ``count`` sample events through a started, then closed, :class:`AuditLog`."""
    log = AuditLog.from_stores(config or AuditConfig(), stores)
    await log.start()
    try:
        for number in range(start, start + count):
            await log.emit(sample_event(number))
    finally:
        await log.close()
    return log


def audit_store(stores: Stores, config: AuditConfig | None = None) -> AuditStore:
    return AuditStore.from_stores(config or AuditConfig(), stores)


async def execute(stores: Stores, statements: Sequence[str], **params: Any) -> None:
    """Run raw SQL in one transaction: what someone with write access to the database does."""
    async with stores.database.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement), params)


async def rows(stores: Stores, query: str, **params: Any) -> list[Any]:
    async with stores.database.engine.connect() as connection:
        return list((await connection.execute(text(query), params)).all())

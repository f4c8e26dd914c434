"""Stores: built from StoreConfig, started with or without migrations, readiness checks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bastion.store.config import StoreConfig
from bastion.store.errors import StoreError
from bastion.store.migrate import current_revisions, head_revisions
from bastion.store.stores import CSRF_KEY_PURPOSE, Stores

KEK = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[Stores]:
    """Started stores over a new database, without Redis."""
    started = Stores(StoreConfig(database_url=database_url, key_encryption_key=KEK))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


async def test_start_migrates_by_default(stores: Stores) -> None:
    assert stores.applied_migrations == ["0001", "0002", "0003", "0004"]
    assert await current_revisions(stores.database) == head_revisions()
    assert stores.redis is None
    assert stores.keys.encrypted


async def test_start_again_applies_nothing(stores: Stores) -> None:
    await stores.start()
    assert stores.applied_migrations == []


@pytest.mark.parametrize(
    ("auto_migrate", "migrate", "migrated"),
    [(False, None, False), (True, False, False), (False, True, True)],
)
async def test_migrate_argument_overrides_auto_migrate(
    database_url: str, auto_migrate: bool, migrate: bool | None, migrated: bool
) -> None:
    stores = Stores(StoreConfig(database_url=database_url, auto_migrate=auto_migrate))
    await stores.start(migrate=migrate)
    try:
        assert bool(await current_revisions(stores.database)) is migrated
    finally:
        await stores.close()


async def test_checks_report_every_configured_store(
    database_url: str, clean_redis_url: str
) -> None:
    stores = Stores(StoreConfig(database_url=database_url, redis_url=clean_redis_url))
    await stores.start()
    try:
        checks = await stores.checks()
    finally:
        await stores.close()
    assert set(checks) == {"database", "redis"}
    for check in checks.values():
        assert check["status"] == "ok"
        assert isinstance(check["latency_ms"], float)
        assert check["latency_ms"] >= 0
        assert "error" not in check


async def test_checks_report_failures_without_secrets(database_url: str, closed_port: int) -> None:
    stores = Stores(
        StoreConfig(
            database_url=database_url,
            redis_url=f"redis://:hunter2@127.0.0.1:{closed_port}/0",
            timeout="500ms",
        )
    )
    try:
        checks = await stores.checks()
    finally:
        await stores.close()
    assert checks["database"] == {
        "status": "error",
        "latency_ms": checks["database"]["latency_ms"],
        "error": "the database is not started",
    }
    assert checks["redis"]["status"] == "error"
    assert checks["redis"]["error"].startswith("redis ping failed")
    assert "hunter2" not in str(checks)


async def test_database_down_at_start_fails_start(closed_port: int) -> None:
    stores = Stores(
        StoreConfig(database_url=f"postgresql+asyncpg://u:pw@127.0.0.1:{closed_port}/db")
    )
    with pytest.raises(StoreError, match="database ping failed") as caught:
        await stores.start()
    assert "pw@" not in str(caught.value)
    await stores.close()


def test_invalid_key_encryption_key_fails_before_connecting() -> None:
    with pytest.raises(StoreError, match="must decode to 32 bytes"):
        Stores(StoreConfig(key_encryption_key=base64.b64encode(b"x" * 16).decode()))


async def test_start_warns_when_keys_are_stored_unencrypted(database_url: str) -> None:
    stores = Stores(StoreConfig(database_url=database_url))
    with capture_logs() as logs:
        await stores.start()
    await stores.close()
    assert any(
        entry["log_level"] == "warning" and "key_encryption_key is not set" in entry["event"]
        for entry in logs
    )


async def test_start_is_quiet_about_encryption_when_a_key_is_set(database_url: str) -> None:
    # The slow-query log off: on a slow disk the migration's statements pass its 100 ms and
    # their lines would stand beside the one this test expects.
    config = StoreConfig(database_url=database_url, key_encryption_key=KEK, slow_query=0)
    stores = Stores(config)
    with capture_logs() as logs:
        await stores.start()
    await stores.close()
    assert [entry["event"] for entry in logs] == ["database migrated"]


async def test_csrf_keys_are_shared_by_instances(stores: Stores, database_url: str) -> None:
    secrets = await stores.csrf_keys()
    assert len(secrets) == 1
    assert len(secrets[0]) == 32
    other = Stores(StoreConfig(database_url=database_url, key_encryption_key=KEK))
    await other.start()
    try:
        assert await other.csrf_keys() == secrets
        [key] = await other.keys.active(CSRF_KEY_PURPOSE)
        assert key.algorithm == "HMAC-SHA256"
    finally:
        await other.close()

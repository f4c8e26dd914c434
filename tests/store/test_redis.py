"""RedisConnector: lazy connection, ping, failures wrapped in StoreError."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bastion.store.errors import StoreError
from bastion.store.redis import RedisConnector

pytestmark = pytest.mark.redis


async def test_ping_and_commands(clean_redis_url: str) -> None:
    connector = RedisConnector.from_url(clean_redis_url, timeout=1.5)
    try:
        assert isinstance(connector.client, Redis)
        await connector.ping()
        await connector.client.set("bastion:test", b"value", ex=10)
        assert await connector.client.get("bastion:test") == b"value"
        pool_kwargs = connector.client.connection_pool.connection_kwargs
        assert pool_kwargs["socket_timeout"] == 1.5
        assert pool_kwargs["socket_connect_timeout"] == 1.5
        assert pool_kwargs["health_check_interval"] > 0
    finally:
        await connector.close()


async def test_building_a_connector_connects_nothing(closed_port: int) -> None:
    connector = RedisConnector.from_url(f"redis://127.0.0.1:{closed_port}/0")
    await connector.close()


async def test_ping_failure_raises_store_error_without_the_password(closed_port: int) -> None:
    connector = RedisConnector.from_url(f"redis://:hunter2@127.0.0.1:{closed_port}/0", timeout=0.5)
    try:
        with pytest.raises(StoreError, match="redis ping failed") as caught:
            await connector.ping()
        assert "hunter2" not in str(caught.value)
        assert caught.value.__cause__ is not None
    finally:
        await connector.close()

"""The Redis connection shared by every capability that uses ``store.redis_url``."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion.store.errors import StoreError, describe

__all__ = ["RedisConnector"]

_HEALTH_CHECK_INTERVAL = 15


class RedisConnector:
    """One ``redis.asyncio.Redis`` client (and its connection pool) per process.

    Nothing connects until the first command, so a Redis that starts after Bastion is picked up
    without a restart. Replies are parsed by hiredis when it is installed (it is a dependency).
    """

    def __init__(self, client: Redis, *, timeout: float) -> None:
        self.client = client
        """The client capabilities issue their commands on."""
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0) -> RedisConnector:
        """A connector for ``redis://``, ``rediss://`` or ``unix://`` with ``timeout`` applied to
        connecting and to every command; idle connections are checked before reuse."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=_HEALTH_CHECK_INTERVAL,
        )
        return cls(client, timeout=timeout)

    async def ping(self) -> None:
        """``PING`` within ``timeout``; :class:`StoreError` says why it failed."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis ping failed: {describe(exc)}") from exc

    async def close(self) -> None:
        """Close the client and its pooled connections."""
        await self.client.aclose()

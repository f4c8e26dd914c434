"""Every store a running Bastion uses, started and stopped together by the engine."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.keys import KeyStore, NewKey
from bastion.store.migrate import upgrade
from bastion.store.redis import RedisConnector

__all__ = ["CSRF_KEY_PURPOSE", "Stores"]

CSRF_KEY_PURPOSE = "csrf"
_CSRF_SECRET_BYTES = 32

_log: Any = structlog.get_logger("bastion.store")


class Stores:
    """The stores of ``[store]``: the database (always), Redis (when ``redis_url`` is set) and
    the key store. Building one connects nothing; :meth:`start` does.

    An invalid ``key_encryption_key`` raises :class:`StoreError` here, before anything starts.
    ``on_slow_query`` receives the kind of each slow SQL statement (for the metric).
    """

    def __init__(
        self, config: StoreConfig, *, on_slow_query: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self.database = Database(config, on_slow_query=on_slow_query)
        self.redis: RedisConnector | None = (
            RedisConnector.from_url(config.redis_url, timeout=config.timeout)
            if config.redis_url
            else None
        )
        self.keys = KeyStore.from_config(self.database, config)
        self.applied_migrations: list[str] = []
        """Revisions the last :meth:`start` applied."""

    async def start(self, migrate: bool | None = None) -> None:
        """Connect the database and apply pending migrations (``migrate`` defaults to
        ``store.auto_migrate``). Redis connects on its first command."""
        await self.database.start()
        if self.config.auto_migrate if migrate is None else migrate:
            self.applied_migrations = await upgrade(self.database)
            if self.applied_migrations:
                _log.info("database migrated", revisions=self.applied_migrations)
        if not self.keys.encrypted:
            _log.warning(
                "store.key_encryption_key is not set: keys in bastion_keys are stored unencrypted"
            )

    async def close(self) -> None:
        """Close Redis and the database pool."""
        try:
            if self.redis is not None:
                await self.redis.close()
        finally:
            await self.database.close()

    async def checks(self) -> dict[str, dict[str, Any]]:
        """One entry per configured store for ``/_bastion/ready``:
        ``{"status": "ok" | "error", "latency_ms": float}``, plus ``"error"`` when failing."""
        results = {"database": await _timed(self.database.ping)}
        if self.redis is not None:
            results["redis"] = await _timed(self.redis.ping)
        return results

    async def csrf_keys(self) -> list[bytes]:
        """The shared CSRF secrets, newest first, generated on first use."""
        keys = await self.keys.get_or_create(CSRF_KEY_PURPOSE, _new_csrf_secret)
        return [key.material for key in keys]


def _new_csrf_secret() -> NewKey:
    return NewKey(algorithm="HMAC-SHA256", material=os.urandom(_CSRF_SECRET_BYTES))


async def _timed(ping: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await ping()
    except StoreError as exc:
        return {"status": "error", "latency_ms": _elapsed_ms(started), "error": str(exc)}
    return {"status": "ok", "latency_ms": _elapsed_ms(started)}


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

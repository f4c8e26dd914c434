"""Revocations and account changes reach every instance within the poll interval.

The database is the source of truth: each change is a row of ``bastion_auth_changes`` written in
the transaction that made it. Every instance reads the rows after the last one it saw every
``auth.revocation_poll`` (default 0.5 s), so ``--workers N`` without Redis still revokes within
a second. With Redis, the writer also publishes the change, and subscribers apply it at once;
the poll stays as the guarantee (a missed message is caught by the next read).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from redis.exceptions import RedisError

from bastion.auth.repository import ChangeKind, IdentityStore
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError
from bastion.store.models import utc_now
from bastion.store.redis import RedisConnector

__all__ = ["CHANNEL", "ChangeFeed"]

CHANNEL = "bastion:auth:changes"
_RETENTION = timedelta(days=1)
_OVERLAP = 30.0
"""Seconds of recent changes re-read on every poll (see :meth:`ChangeFeed.poll`)."""
_PRUNE_EVERY = 3600.0

_log: Any = structlog.get_logger("bastion.auth")

Listener = Callable[[str, str], None]
"""Called with ``(kind, subject)`` for each change."""


class ChangeFeed:
    """Delivers ``(kind, subject)`` changes from any instance to :attr:`listener`."""

    def __init__(
        self,
        store: IdentityStore,
        listener: Listener,
        *,
        interval: float,
        redis: RedisConnector | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._listener = listener
        self._interval = interval
        self._redis = redis
        self._last_id = 0
        self._recent: dict[int, float] = {}
        """Ids applied within the overlap window, with when they were applied."""
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False

    async def start(self) -> None:
        """Skip the history, then follow new changes (caches start empty anyway)."""
        self._last_id = await self._store.latest_change()
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="bastion-auth-poll"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._subscribe(), name="bastion-auth-sub"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def publish(self, kind: ChangeKind, subject: str) -> None:
        """Apply a change made by this instance now, and tell other instances via Redis (the
        database row was written with the change itself)."""
        self._listener(kind, subject)
        if self._redis is None:
            return
        try:
            await self._redis.client.publish(CHANNEL, f"{kind}:{subject}")
        except (RedisError, OSError) as exc:
            self._store_error("redis", "auth_publish")
            _log.warning("could not publish an auth change; instances will poll it", error=str(exc))

    async def poll(self) -> int:
        """Read and apply the changes not seen yet; returns how many.

        Rows are read by id and, for the last :data:`_OVERLAP` seconds, by time as well, so a
        row that became visible after a higher id (a transaction that committed late) is still
        applied; ids already applied are skipped.
        """
        now = time.time()
        since = utc_now() - timedelta(seconds=_OVERLAP)
        changes = await self._store.changes_after(self._last_id, since=since)
        applied = 0
        for change_id, kind, subject in changes:
            if change_id in self._recent:
                continue
            self._recent[change_id] = now
            self._last_id = max(self._last_id, change_id)
            self._listener(kind, subject)
            applied += 1
        horizon = now - 2 * _OVERLAP
        for change_id in [key for key, seen in self._recent.items() if seen < horizon]:
            del self._recent[change_id]
        return applied

    def _store_error(self, store: str, op: str) -> None:
        if self._metrics is not None:
            self._metrics.store_error(store, op)

    async def _poll_forever(self) -> None:
        since_prune = 0.0
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
                since_prune += self._interval
                if since_prune >= _PRUNE_EVERY:
                    since_prune = 0.0
                    await self._store.prune_changes(before=utc_now() - _RETENTION)
                if self._failing:
                    self._failing = False
                    _log.info("auth change feed recovered")
            except StoreError as exc:
                self._store_error("database", "auth_changes")
                if not self._failing:
                    self._failing = True
                    _log.error("auth change feed cannot read the database", error=str(exc))

    async def _subscribe(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        kind, _, subject = data.decode("utf-8", "replace").partition(":")
                        self._listener(kind, subject)
            except (RedisError, OSError) as exc:
                self._store_error("redis", "auth_subscribe")
                _log.warning("auth change subscription lost; polling covers it", error=str(exc))
                await asyncio.sleep(self._interval * 4)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

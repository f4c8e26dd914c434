"""The identity change feed counts its store failures in ``bastion_store_errors_total`` and
keeps working from the other path (polling covers a lost Redis; the next poll a failed one)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from bastion.auth.changes import ChangeFeed
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError
from bastion.store.redis import RedisConnector


class FlakyChanges:
    """The two feed queries of the identity store; reads fail while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = True
        self.rows: list[tuple[int, str, str]] = []

    async def latest_change(self) -> int:
        return 0

    async def changes_after(self, last_id: int, *, since: Any) -> list[tuple[int, str, str]]:
        if self.failing:
            raise StoreError("database is down")
        return [row for row in self.rows if row[0] > last_id]

    async def prune_changes(self, *, before: Any) -> int:
        return 0


def errors(metrics: Metrics, store: str, op: str) -> float:
    labels = {"store": store, "op": op}
    return metrics.registry.get_sample_value("bastion_store_errors_total", labels) or 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_failed_polls_are_counted_and_the_feed_recovers() -> None:
    metrics = Metrics()
    store = FlakyChanges()
    seen: list[tuple[str, str]] = []
    feed = ChangeFeed(
        store,  # type: ignore[arg-type]
        lambda kind, subject: seen.append((kind, subject)),
        interval=0.01,
        metrics=metrics,
    )
    await feed.start()
    try:
        # Polls every 10 ms, but a slow machine may take far longer: up to 30 s for each step.
        async with asyncio.timeout(30):
            while errors(metrics, "database", "auth_changes") < 2:
                await asyncio.sleep(0.01)
        store.rows.append((1, "session", "s-1"))
        store.failing = False
        async with asyncio.timeout(30):
            while not seen:
                await asyncio.sleep(0.01)
        assert seen == [("session", "s-1")]
    finally:
        await feed.close()


async def test_a_publish_redis_refuses_is_counted_and_still_applied_here() -> None:
    metrics = Metrics()
    redis = RedisConnector.from_url(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    seen: list[tuple[str, str]] = []
    feed = ChangeFeed(
        FlakyChanges(),  # type: ignore[arg-type]
        lambda kind, subject: seen.append((kind, subject)),
        interval=60.0,
        redis=redis,
        metrics=metrics,
    )
    try:
        await feed.publish("user", "u-1")
    finally:
        await redis.close()
    assert seen == [("user", "u-1")]
    assert errors(metrics, "redis", "auth_publish") == 1.0

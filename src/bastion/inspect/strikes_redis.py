"""Strikes in Redis, shared by every instance at once (see :mod:`bastion.inspect.strikes`).

Counting and blocking is one call of the rate limiter's script (:meth:`RedisStore.strike`): the
block goes to the client's penalty record and the ban index, so the gate's one ``EVALSHA``
refuses a struck address, and ``bastion bans`` lists and lifts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bastion.inspect.config import StrikesConfig
from bastion.inspect.strikes import SOURCE
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.ratelimit.core import RateLimitStoreError
from bastion.ratelimit.redis_store import RedisStore

__all__ = ["RedisStrikes"]

_log: Any = get_logger("bastion.inspect")


class RedisStrikes:
    """Strikes and blocks in the rate limiter's Redis store (module docstring).

    A Redis failure lets requests through (a check answers "not blocked", a strike is not
    counted): strikes add to inspection, which still blocks each attack on its own. Failures
    are counted as ``bastion_store_errors_total{store="redis", op="strike_check|strike"}``.
    """

    def __init__(
        self, store: RedisStore, config: StrikesConfig, *, metrics: Metrics | None = None
    ) -> None:
        self._store = store
        self._threshold = config.threshold
        self._window = config.window
        self._duration = config.duration
        self._metrics = metrics
        self._failing = False

    async def blocked_for(self, client: str) -> float:
        try:
            left, source = await self._store.penalty(client)
        except RateLimitStoreError as exc:
            self._failed("strike_check", exc)
            return 0.0
        self._failing = False
        return left if source == SOURCE else 0.0

    async def strike(self, clients: Sequence[str]) -> list[str]:
        try:
            blocked = await self._store.strike(
                clients,
                threshold=self._threshold,
                window=self._window,
                duration=self._duration,
            )
        except RateLimitStoreError as exc:
            self._failed("strike", exc)
            return []
        self._failing = False
        return blocked

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.store_error("redis", op)
        if not self._failing:
            self._failing = True
            _log.error("strike store failed; requests pass unchecked", op=op, error=str(exc))

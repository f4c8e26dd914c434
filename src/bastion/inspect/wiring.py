"""How inspection plugs into the engine: the inspector, the strike store and the stages.

The ``inspect`` stage is in the chain unless ``inspect.mode = "off"`` and no route turns it on.
Strike blocks are written to the rate limiter's penalty records (its store: Redis, or memory
with the SQL ban ledger), so its gate refuses struck addresses in the store call it makes
anyway, and no strike check of its own is in the chain. With rate limiting off, inspection
keeps a store of the same kind for its strikes (same keys, same ledger table, so
``bastion bans`` finds them) and :class:`StrikeGate` checks addresses right after the probes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp
from bastion.inspect.config import InspectConfig
from bastion.inspect.engine import Inspector
from bastion.inspect.stage import InspectStage, StrikeGate
from bastion.inspect.strikes import MemoryStrikes, StrikeStore
from bastion.inspect.strikes_redis import RedisStrikes
from bastion.ratelimit.core import RateLimitStore
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.policies import PolicySet
from bastion.ratelimit.redis_store import RedisStore

if TYPE_CHECKING:
    from bastion.ratelimit.wiring import RateLimiting

__all__ = ["Inspection"]

_REDIS_TIMEOUT = 0.5
"""Longest a request waits on Redis for a strike check or count (``store.timeout`` when
shorter); past it the request passes unchecked (see :class:`RedisStrikes`)."""


class Inspection:
    """The inspection capability of one engine."""

    def __init__(
        self, config: InspectConfig, deps: Deps, *, ratelimit: RateLimiting | None = None
    ) -> None:
        self.config = config
        self.inspector = Inspector(config, auth_prefix=deps.prefix + "/auth/")
        # The same aggregation as the gate's, so a strike and a ban name the same client.
        policies = (
            ratelimit.policies
            if ratelimit is not None
            else PolicySet(deps.settings.ratelimit, prefix=deps.prefix)
        )
        self.bucket: Callable[[str], str] = lambda ip: policies.client(ip)[0]
        self.strikes: StrikeStore | None = None
        self._merged = False
        self._own_store: RateLimitStore | None = None
        self._own_ledger: SqlBanLedger | None = None
        if config.strikes.enabled and self.enabled(config):
            self.strikes = self._strike_store(deps, ratelimit)

    @staticmethod
    def enabled(config: InspectConfig) -> bool:
        """Whether any path is inspected: the section's mode or a route's is not ``off``."""
        return config.mode != "off" or any(
            route.mode not in (None, "off") for route in config.routes
        )

    def _strike_store(self, deps: Deps, ratelimit: RateLimiting | None) -> StrikeStore:
        store: RateLimitStore
        if ratelimit is not None:
            ratelimit.check_strikes()
            self._merged = True
            store = ratelimit.store
        else:
            store = self._own_store = self._penalty_store(deps)
        if isinstance(store, RedisStore):
            return RedisStrikes(store, self.config.strikes, metrics=deps.metrics)
        if isinstance(store, MemoryStore):
            return MemoryStrikes(self.config.strikes, store)
        raise TypeError(f"strikes cannot be recorded in a {type(store).__name__}")

    def _penalty_store(self, deps: Deps) -> RateLimitStore:
        """Rate limiting is off: a store of the kind it would use, for the penalty records
        alone (Redis when ``store.redis_url`` is set and ``ratelimit.store`` is not
        ``memory``, the rule ``bastion bans`` follows; else memory and the ban ledger)."""
        from bastion.ratelimit.wiring import REDIS_KEY_PREFIX

        settings = deps.settings
        redis = deps.stores.redis if deps.stores is not None else None
        if redis is not None and settings.ratelimit.store != "memory":
            timeout = min(settings.store.timeout, _REDIS_TIMEOUT)
            return RedisStore(redis, prefix=REDIS_KEY_PREFIX, timeout=timeout)
        if deps.stores is not None:
            self._own_ledger = SqlBanLedger(
                deps.stores.database,
                retention=self.config.strikes.duration,
                metrics=deps.metrics,
            )
        return MemoryStore(max_keys=settings.ratelimit.max_keys, ledger=self._own_ledger)

    @property
    def has_gate(self) -> bool:
        """Whether the strike gate runs: strikes enabled and no rate-limit gate checks them."""
        return self.strikes is not None and not self._merged

    def gate(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The strike check in front of ``app`` (where the rate-limit gate would be)."""
        assert self.strikes is not None
        return StrikeGate(
            app, config=self.config, deps=deps, strikes=self.strikes, bucket=self.bucket
        )

    def stage(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The ``inspect`` stage in front of ``app``."""
        return InspectStage(
            app,
            config=self.config,
            deps=deps,
            inspector=self.inspector,
            strikes=self.strikes,
            bucket=self.bucket,
        )

    async def start(self) -> None:
        """Load the strike ledger when this capability owns it."""
        if self._own_ledger is not None:
            await self._own_ledger.start()

    async def close(self) -> None:
        """Close the strike store and flush the ledger when this capability owns them."""
        try:
            if self._own_store is not None:
                await self._own_store.close()
        finally:
            if self._own_ledger is not None:
                await self._own_ledger.close()

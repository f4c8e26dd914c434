"""How rate limiting plugs into the engine: its store, its policies, its two stages.

``store = "auto"`` counts in Redis when ``store.redis_url`` is set, else in this process's memory.
With the memory store and bans on, bans go through the SQL ban ledger, so a ban started by one
worker or instance holds in all of them; counters stay per process (start-up warns when
``server.workers > 1``). Inspection strike blocks go to the same store and ledger
(:meth:`RateLimiting.check_strikes`), so the gate refuses both kinds in its one store call.
"""

from __future__ import annotations

from typing import Any

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp
from bastion.observe.logging import get_logger
from bastion.ratelimit.config import RateLimitConfig
from bastion.ratelimit.core import RateLimitStore
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.limiter import Limiter
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.policies import PolicySet
from bastion.ratelimit.stage import GateStage, RateLimitStage

__all__ = ["REDIS_KEY_PREFIX", "RateLimiting"]

REDIS_KEY_PREFIX = "bastion:rl:"
"""Prefix of every rate-limit key in Redis."""

_REDIS_TIMEOUT = 0.5
"""Longest a request waits on Redis for its decision (``store.timeout`` when shorter); past it
the policies' ``on_store_error`` applies."""

_log: Any = get_logger("bastion.ratelimit")


class RateLimiting:
    """The rate-limit capability of one engine."""

    def __init__(self, config: RateLimitConfig, deps: Deps) -> None:
        self.config = config
        self.policies = PolicySet(config, prefix=deps.prefix)
        self.ledger: SqlBanLedger | None = None
        self.strikes = False
        """Whether the gate checks inspection strike blocks (:meth:`check_strikes`)."""
        self._workers = deps.settings.server.workers
        store_config = deps.settings.store
        redis = deps.stores.redis if deps.stores is not None else None
        if config.store == "redis" and redis is None:
            raise ValueError("ratelimit.store = 'redis' needs store.redis_url")
        self.store: RateLimitStore
        if redis is not None and config.store != "memory":
            from bastion.ratelimit.redis_store import RedisStore

            self.store_name = "redis"
            self.store = RedisStore(
                redis, prefix=REDIS_KEY_PREFIX, timeout=min(store_config.timeout, _REDIS_TIMEOUT)
            )
        else:
            self.store_name = "memory"
            strikes = deps.settings.inspect.strikes.enabled
            if (config.bans.enabled or strikes) and deps.stores is not None:
                self.ledger = SqlBanLedger(
                    deps.stores.database, retention=config.bans.reset_after, metrics=deps.metrics
                )
            self.store = MemoryStore(max_keys=config.max_keys, ledger=self.ledger)
        self.limiter = Limiter(
            self.store,
            config=config,
            policies=self.policies,
            metrics=deps.metrics,
            audit=deps.audit,
            store_name=self.store_name,
            local=self._local_store,
        )

    def _local_store(self) -> MemoryStore:
        return MemoryStore(max_keys=self.config.max_keys, ledger=self.ledger)

    def check_strikes(self) -> None:
        """Inspection counts strikes into this capability's store: the gate checks every
        client's penalty record, also when rate-limit bans are off."""
        self.strikes = True

    @property
    def has_gate(self) -> bool:
        """Whether the gate has anything to decide: early policies, bans or strike blocks."""
        return bool(self.policies.early) or self.config.bans.enabled or self.strikes

    @property
    def has_late(self) -> bool:
        """Whether any policy needs the principal."""
        return bool(self.policies.late)

    def gate(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The gate stage in front of ``app``."""
        return GateStage(
            app, config=self.config, deps=deps, limiter=self.limiter, strikes=self.strikes
        )

    def stage(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The ``ratelimit`` stage in front of ``app``."""
        return RateLimitStage(app, config=self.config, deps=deps, limiter=self.limiter)

    async def start(self) -> None:
        """Start the ban ledger; warn when counters are per process but processes are many."""
        if self.store_name == "memory" and self._workers > 1:
            _log.warning(
                "rate-limit counters are per worker without Redis: each of the workers allows "
                "the full limit (bans are shared); set store.redis_url to share counters",
                workers=self._workers,
            )
        if self.ledger is not None:
            await self.ledger.start()

    async def close(self) -> None:
        """Close the store and flush the ban ledger."""
        try:
            await self.store.close()
        finally:
            if self.ledger is not None:
                await self.ledger.close()

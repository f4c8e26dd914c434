"""How inspection plugs into the engine: the inspector, the strike store and the two stages.

The ``inspect`` stage is in the chain unless ``inspect.mode = "off"`` and no route turns it on;
the strike check only when strikes are enabled too. Strikes go to Redis when rate limiting keeps
its bans there (``store.redis_url`` set, ``ratelimit.store`` not ``memory``, the rule
``bastion bans`` follows), else to the SQL ban ledger: the rate limiter's own when it has one,
so one poll serves both, else one of this capability's, started and closed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp
from bastion.inspect.config import InspectConfig
from bastion.inspect.engine import Inspector
from bastion.inspect.stage import InspectStage, StrikeGate
from bastion.inspect.strikes import LedgerStrikes, StrikeStore
from bastion.inspect.strikes_redis import RedisStrikes
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.policies import PolicySet

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
        store = deps.settings.store
        redis = deps.stores.redis if deps.stores is not None else None
        if redis is not None and deps.settings.ratelimit.store != "memory":
            return RedisStrikes(
                redis,
                self.config.strikes,
                timeout=min(store.timeout, _REDIS_TIMEOUT),
                metrics=deps.metrics,
            )
        ledger = ratelimit.ledger if ratelimit is not None else None
        if ledger is None and deps.stores is not None:
            ledger = self._own_ledger = SqlBanLedger(
                deps.stores.database,
                retention=self.config.strikes.duration,
                metrics=deps.metrics,
            )
        return LedgerStrikes(self.config.strikes, ledger)

    @property
    def has_gate(self) -> bool:
        """Whether the strike check runs (strikes enabled)."""
        return self.strikes is not None

    def gate(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The strike check in front of ``app`` (right after the rate-limit gate)."""
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
        """Write the strikes still queued and stop polling."""
        if self._own_ledger is not None:
            await self._own_ledger.close()

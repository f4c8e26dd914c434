"""One request's rate-limit decision, shared by the gate, the ``ratelimit`` stage and the
``rate_limit`` dependency: one store call, the refusal responses, what happens when the shared
store fails, the tarpit, bans in the audit log, and the metrics.

A client whose penalty record is in force is refused without counting: 429 ``client_banned``
when rate-limit refusals started it, 403 ``client_blocked`` when inspection strikes did
(counted as ``bastion_inspect_refused_total{reason="strike"}``, as the inspect stage counts the
strikes of a principal).

When the store fails (:class:`RateLimitStoreError`), each policy's ``on_store_error`` decides:
``open`` lets the request through uncounted, ``closed`` refuses it with 503
``ratelimit_unavailable``, ``local`` counts it in this process's memory until the store is
back. After a failure the store is left alone for a second, so a store that hangs costs one
timeout per second rather than one per request; then the next request tries it again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bastion.audit.events import AuditEvent, AuditSink
from bastion.http.problems import BastionError, register
from bastion.http.state import RequestState
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics
from bastion.ratelimit.config import RateLimitConfig
from bastion.ratelimit.core import (
    INSPECT,
    BanRule,
    Check,
    Decision,
    RateLimitStore,
    RateLimitStoreError,
    Verdict,
)
from bastion.ratelimit.headers import HeaderRenderer, RateLimitReport, retry_after_seconds
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.policies import PolicySet, RequestPlan

__all__ = ["LIMITER_KEY", "Limiter", "LocalStore", "client_blocked"]

register("rate_limited", 429, "Too many requests")
register("client_banned", 429, "Client banned")
register("client_blocked", 403, "Client blocked")
register("ratelimit_unavailable", 503, "Rate limiting unavailable")

LIMITER_KEY = "bastion.ratelimit"
"""Key under ``scope["state"]`` where the rate-limit stages leave the :class:`Limiter`."""

_BACKOFF = 1.0
"""Seconds the shared store is not asked again after it failed."""
_PENDING_LIMIT = 1024
"""Most plans whose counts wait for a scrape; beyond, they are added at once."""
_BANS_POLICY = "_bans"
"""Metric label of requests refused because their client is banned (no policy name can start
with ``_``)."""

_log: Any = get_logger("bastion.ratelimit")


def client_blocked(seconds: float) -> BastionError:
    """The 403 of a client refused for its inspection strikes, with the time left."""
    left = max(math.ceil(seconds), 1)
    return BastionError(
        "client_blocked",
        "Too many of this client's requests were blocked; try again later",
        headers={"Retry-After": str(left)},
        extensions={"retry_after": left},
    )


class LocalStore(Protocol):
    """The per-process store ``on_store_error = "local"`` falls back on (a ``MemoryStore``)."""

    def evaluate_now(
        self, checks: Sequence[Check], *, client: str | None = None, bans: BanRule | None = None
    ) -> Verdict: ...

    async def release(self, checks: Sequence[Check]) -> None: ...


_Decided = tuple[Verdict, "RateLimitStore | LocalStore", Sequence[Check]]
"""A verdict, the store that gave it (and holds its slots), and the checks it decided: all of
them, or those ``on_store_error = "local"`` counted in memory while the store failed."""


class Limiter:
    """Decides requests against ``store`` for every rate-limit stage of one engine."""

    def __init__(
        self,
        store: RateLimitStore,
        *,
        config: RateLimitConfig,
        policies: PolicySet,
        metrics: Metrics,
        audit: AuditSink | None,
        store_name: str,
        local: Callable[[], LocalStore] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.policies = policies
        self.renderer = HeaderRenderer(policies, legacy=config.legacy_headers)
        self._metrics = metrics
        # Single process: decisions are plain ints read when scraped (see Metrics).
        self._counts = metrics.ratelimit_counts
        self._pending: dict[RequestPlan, int] = {}
        """Requests a plan's checks all allowed since the last scrape: added to the counts
        when scraped (one increment per request instead of one per check)."""
        if metrics.ratelimit_collector is not None:
            metrics.ratelimit_collector.before_collect.append(self.flush_counts)
        # The in-process store decides synchronously and never fails: no coroutine, and no
        # latency histogram (microseconds of Python, not worth a lock per request).
        self._memory: MemoryStore | None = store if isinstance(store, MemoryStore) else None
        self._audit = audit
        self._store_name = store_name
        self._make_local = local
        self._local: LocalStore | None = None
        self._clock = clock
        self._on_error = {name: p.config.on_store_error for name, p in policies.by_name.items()}
        self._concurrency = policies.has_concurrency
        self._log_interval = config.error_log_interval
        self._tarpit = config.tarpit.enabled
        self._max_delay = config.tarpit.max_delay
        self._max_waiting = config.tarpit.max_waiting
        self.waiting = 0
        """Requests the tarpit holds now."""
        self._down_until = 0.0
        self._next_log = 0.0
        self._failures = 0
        self._failing = False

    @property
    def synchronous(self) -> bool:
        """Whether the store decides without I/O (the memory store): :meth:`admit_now`."""
        return self._memory is not None

    def admit_now(
        self,
        checks: Sequence[Check],
        *,
        client: str,
        bans: BanRule | None,
        report: RateLimitReport,
    ) -> Verdict | None:
        """:meth:`admit` with the memory store, without a coroutine on the common path: an
        allowed request is counted and ``None`` returned; a refusal is returned for
        :meth:`refuse` (bans, tarpit, the 429)."""
        memory = self._memory
        if memory is None:
            raise RuntimeError("admit_now needs the memory store: use admit")
        verdict = memory.evaluate_now(checks, client=client, bans=bans)
        if not verdict.allowed:
            return verdict
        self._allowed(verdict, memory, checks, report)
        return None

    def admit_plan(
        self, plan: RequestPlan, *, bans: BanRule | None, report: RateLimitReport
    ) -> Verdict | None:
        """:meth:`admit_now` of a static plan's checks (never concurrency ones, so no slot is
        held), counted in the metrics per plan rather than per check; the report keeps the plan
        for the header encoding it holds."""
        memory = self._memory
        if memory is None:
            raise RuntimeError("admit_plan needs the memory store: use admit")
        checks = plan.checks
        batch = plan.batch
        if batch is not None:
            verdict = memory.evaluate_batch(batch, plan.client, bans)
        else:
            verdict = memory.evaluate_now(checks, client=plan.client, bans=bans)
        if not verdict.allowed:
            return verdict
        self._allowed_plan(plan, verdict.decisions, report)
        return None

    async def admit_static(
        self,
        plan: RequestPlan,
        *,
        bans: BanRule | None,
        state: RequestState,
        report: RateLimitReport,
    ) -> None:
        """:meth:`admit` of a static plan's checks with a shared store: the store keys the
        command it sends on the plan, an allowed request is counted per plan and its headers
        come from the plan's encoding, as with :meth:`admit_plan`."""
        checks = plan.checks
        decided = await self._evaluate(checks, plan.client, bans, plan)
        if decided is None:
            return
        verdict, store, evaluated = decided
        if not verdict.allowed:
            await self._refuse(decided, checks, plan.client, state, report)
        elif evaluated is checks:
            self._allowed_plan(plan, verdict.decisions, report)
        else:
            # Decided by the fallback: only the policies of ``on_store_error = "local"``.
            self._allowed(verdict, store, evaluated, report)

    def _allowed_plan(
        self, plan: RequestPlan, decisions: Sequence[Decision], report: RateLimitReport
    ) -> None:
        """:meth:`_allowed` of a static plan's decisions (no slot is ever held)."""
        batches = report.batches
        if not batches:
            report.plan = plan
        batches.append((plan.checks, decisions))
        counts = self._counts
        if counts is None:
            for (allowed, shadow), decision in zip(plan.labels, decisions, strict=False):
                self._metrics.ratelimit_decision(*(allowed if decision.allowed else shadow))
        elif plan.enforced_only:
            # Allowed with every check enforced: every check allowed it.
            pending = self._pending
            pending[plan] = pending.get(plan, 0) + 1
            if len(pending) > _PENDING_LIMIT:
                self.flush_counts()
        else:
            for (allowed, shadow), decision in zip(plan.labels, decisions, strict=False):
                # An allowed request's refused decisions are shadow ones.
                key = allowed if decision.allowed else shadow
                counts[key] = counts.get(key, 0) + 1

    def flush_counts(self) -> None:
        """Add the per-plan counts kept since the last call to the decision metrics (called
        when they are scraped)."""
        counts = self._counts
        pending = self._pending
        if counts is None or not pending:
            return
        self._pending = {}
        for plan, requests in pending.items():
            for allowed, _ in plan.labels:
                counts[allowed] = counts.get(allowed, 0) + requests

    async def admit(
        self,
        checks: Sequence[Check],
        *,
        client: str,
        bans: BanRule | None,
        state: RequestState,
        report: RateLimitReport,
    ) -> None:
        """Count the request or raise the refusal; decisions and held slots go to ``report``."""
        if self._memory is not None:
            verdict = self.admit_now(checks, client=client, bans=bans, report=report)
            if verdict is not None:
                await self.refuse(verdict, checks, client=client, state=state, report=report)
            return
        decided = await self._evaluate(checks, client, bans)
        if decided is None:
            return
        if decided[0].allowed:
            self._allowed(*decided, report)
            return
        await self._refuse(decided, checks, client, state, report)

    async def refuse(
        self,
        verdict: Verdict,
        checks: Sequence[Check],
        *,
        client: str,
        state: RequestState,
        report: RateLimitReport,
    ) -> None:
        """The memory store refused what :meth:`admit_now` asked: ban, hold (tarpit) or 429."""
        memory = self._memory
        if memory is None:
            raise RuntimeError("refuse follows admit_now: use admit")
        await self._refuse((verdict, memory, checks), checks, client, state, report)

    def _allowed(
        self,
        verdict: Verdict,
        store: RateLimitStore | LocalStore,
        evaluated: Sequence[Check],
        report: RateLimitReport,
    ) -> None:
        decisions = verdict.decisions
        report.batches.append((evaluated, decisions))
        counts = self._counts
        if counts is not None:
            for check, decision in zip(evaluated, decisions, strict=False):
                # An allowed request's refused decisions are shadow ones.
                key = (check.rule.policy, "allowed" if decision.allowed else "shadow_limited")
                counts[key] = counts.get(key, 0) + 1
        else:
            for check, decision in zip(evaluated, decisions, strict=False):
                result = "allowed" if decision.allowed else "shadow_limited"
                self._metrics.ratelimit_decision(check.rule.policy, result)
        if self._concurrency:
            # Only slots the store granted are held: a refused (shadow) check took none.
            held = [
                check
                for check, decision in zip(evaluated, decisions, strict=False)
                if decision.allowed and check.rule.algorithm == "concurrency"
            ]
            if held:
                report.held.append((store, held))

    async def _refuse(
        self,
        decided: _Decided,
        checks: Sequence[Check],
        client: str,
        state: RequestState,
        report: RateLimitReport,
    ) -> None:
        verdict = decided[0]
        if verdict.banned_for > 0 or verdict.new_ban > 0:
            await self._banned(verdict, client, state)
        if self._tarpit:
            retried = await self._hold(decided, checks, client)
            if retried is None:
                return
            if retried[0].allowed:
                self._allowed(*retried, report)
                return
            decided = retried
        verdict, _, evaluated = decided
        decisions = verdict.decisions
        report.add(evaluated, decisions)
        retry_after = 0.0
        for check, decision in zip(evaluated, decisions, strict=False):
            if decision.allowed:
                result = "allowed"
            elif check.enforce:
                result = "limited"
                retry_after = max(retry_after, decision.retry_after)
            else:
                result = "shadow_limited"
            self._metrics.ratelimit_decision(check.rule.policy, result)
        seconds = retry_after_seconds(retry_after)
        headers = self.renderer.render_text(report)
        report.rendered = True
        headers["Retry-After"] = str(seconds)
        raise BastionError(
            "rate_limited",
            "Too many requests; retry later",
            headers=headers,
            extensions={"retry_after": seconds},
        )

    async def release(self, report: RateLimitReport) -> None:
        """Give back the concurrency slots ``report`` holds; each exactly once."""
        while report.held:
            store, checks = report.held.pop()
            try:
                await store.release(checks)
            except RateLimitStoreError as exc:
                # The slot lapses by itself after the policy's period.
                self._failed(exc)

    async def _evaluate(
        self,
        checks: Sequence[Check],
        client: str,
        bans: BanRule | None,
        shape: RequestPlan | None = None,
    ) -> _Decided | None:
        if self._down_until and self._clock() < self._down_until:
            return self._fallback(checks, client, bans)
        started = time.perf_counter()
        try:
            verdict = await self.store.evaluate(checks, client=client, bans=bans, shape=shape)
        except RateLimitStoreError as exc:
            # Failures are timed too: a store timing out is what the histogram must show.
            self._metrics.ratelimit_store_seconds.observe(time.perf_counter() - started)
            self._failed(exc)
            self._down_until = self._clock() + _BACKOFF
            return self._fallback(checks, client, bans)
        self._metrics.ratelimit_store_seconds.observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            self._down_until = 0.0
            self._next_log = 0.0
            _log.info("rate-limit store recovered", store=self._store_name)
        return verdict, self.store, checks

    def _failed(self, exc: RateLimitStoreError) -> None:
        self._metrics.store_error(self._store_name, "ratelimit")
        self._failing = True
        self._failures += 1
        now = self._clock()
        if now >= self._next_log:
            # One line per interval, however many requests meet the failure.
            _log.error(
                "rate-limit store failing; applying each policy's on_store_error",
                store=self._store_name,
                error=str(exc) or type(exc).__name__,
                failures=self._failures,
            )
            self._failures = 0
            self._next_log = now + self._log_interval

    def _fallback(
        self, checks: Sequence[Check], client: str, bans: BanRule | None
    ) -> _Decided | None:
        """Each policy's ``on_store_error``: every check counts as ``store_error``; ``closed``
        refuses, ``open`` lets the request through uncounted, and only the ``local`` checks are
        decided (in memory), so the verdict's decisions are theirs."""
        local: list[Check] = []
        closed = False
        for check in checks:
            mode = self._on_error.get(check.rule.policy, "local")
            self._metrics.ratelimit_decision(check.rule.policy, "store_error")
            if mode == "closed" and check.enforce:
                closed = True
            elif mode == "local":
                local.append(check)
        if closed:
            raise BastionError(
                "ratelimit_unavailable", "Request limits cannot be checked now; retry shortly"
            )
        if (not local and bans is None) or self._make_local is None:
            return None
        if self._local is None:
            self._local = self._make_local()
        return self._local.evaluate_now(local, client=client, bans=bans), self._local, local

    async def _hold(
        self, decided: _Decided, checks: Sequence[Check], client: str
    ) -> _Decided | None:
        """Tarpit: wait out a short refusal once, then decide again; the refusal stands when the
        wait is too long or too many requests are held. The second decision does not count
        toward bans: the first refusal already did."""
        verdict, _, evaluated = decided
        wait = max(
            (
                d.retry_after
                for c, d in zip(evaluated, verdict.decisions, strict=False)
                if c.enforce and not d.allowed
            ),
            default=0.0,
        )
        if wait > self._max_delay or self.waiting >= self._max_waiting:
            return decided
        self.waiting += 1
        try:
            await asyncio.sleep(wait)
        finally:
            self.waiting -= 1
        memory = self._memory
        if memory is not None:
            return memory.evaluate_now(checks, client=client, bans=None), memory, checks
        return await self._evaluate(checks, client, None)

    async def _banned(self, verdict: Verdict, client: str, state: RequestState) -> None:
        if verdict.banned_for > 0 and verdict.ban_source == INSPECT:
            self._metrics.inspect_refusal("strike")
            raise client_blocked(verdict.banned_for)
        self._metrics.ratelimit_decision(_BANS_POLICY, "limited")
        if verdict.new_ban > 0 and self._audit is not None:
            await self._audit.emit(
                AuditEvent(
                    kind="ratelimit.banned",
                    outcome="denied",
                    target=client,
                    client_ip=state.client_ip,
                    request_id=state.request_id,
                    detail={"duration": verdict.new_ban, "level": verdict.ban_level},
                )
            )
        seconds = retry_after_seconds(max(verdict.banned_for, verdict.new_ban))
        raise BastionError(
            "client_banned",
            "Too many refused requests; this client is temporarily banned",
            headers={"Retry-After": str(seconds)},
            extensions={"retry_after": seconds},
        )

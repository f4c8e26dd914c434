"""The ``gate`` and ``ratelimit`` stages (DESIGN.md §1, steps 5 and 11).

The gate runs right after the probes, before anything expensive: the client's penalty record
(rate-limit bans and inspection strike blocks) and every policy keyed by address, route or
header, in one store call. The ``ratelimit`` stage runs right after
authentication with the policies that need the principal (user, API key, tenant, claims), again
in one store call. Each is in the chain only when it has something to decide.

The first of them that sees a request leaves a :class:`RateLimitReport` in the request state and
wraps ``send`` once: when the response starts it adds the ``RateLimit`` headers of every
decision made for the request (its own, the later stage's, a route's ``rate_limit``
dependency), and when the response ends, the client disconnects or anything raises, it gives
back concurrency slots. ``receive`` is watched only when a policy holds slots.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.state import RequestState
from bastion.ratelimit.config import RateLimitConfig
from bastion.ratelimit.core import PENALTIES_ONLY, BanRule
from bastion.ratelimit.headers import REPORT_KEY, RateLimitReport
from bastion.ratelimit.limiter import LIMITER_KEY, Limiter

__all__ = ["GateStage", "RateLimitStage"]

_Header = tuple[bytes, bytes]

_DISCONNECTS = frozenset({"http.disconnect", "websocket.disconnect"})


class _LimitStage:
    """What both stages do; they differ in which policies they apply and whether bans count."""

    _stage: Literal["gate", "late"]

    def __init__(
        self, app: ASGIApp, *, config: RateLimitConfig, deps: Deps, limiter: Limiter
    ) -> None:
        self.app = app
        self._limiter = limiter
        self._policies = limiter.policies
        # Shadow policies are never reported: with only those, there are no headers to add.
        self._headers = config.headers and any(
            p.config.mode == "enforce" for p in limiter.policies.by_name.values()
        )
        self._concurrency = limiter.policies.has_concurrency
        self._synchronous = limiter.synchronous
        self._render = limiter.renderer.render
        self._bans: BanRule | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        shared = scope["state"]
        state: RequestState = shared["bastion"]
        shared[LIMITER_KEY] = self._limiter
        report: RateLimitReport | None = shared.get(REPORT_KEY)
        owner = report is None
        if report is None:
            report = shared[REPORT_KEY] = RateLimitReport()
        plan = self._policies.plan_for(scope, state, self._stage)
        limiter = self._limiter
        bans = self._bans
        checks = self._policies.plan_checks(plan, scope, state)
        if checks or bans is not None:
            if self._synchronous:
                # Decided without a coroutine; a static plan (the usual case) from what it keeps.
                refused = (
                    limiter.admit_plan(plan, bans=bans, report=report)
                    if plan.static
                    else limiter.admit_now(checks, client=plan.client, bans=bans, report=report)
                )
                if refused is not None:
                    await limiter.refuse(
                        refused, checks, client=plan.client, state=state, report=report
                    )
            elif plan.static:
                await limiter.admit_static(plan, bans=bans, state=state, report=report)
            else:
                await limiter.admit(
                    checks, client=plan.client, bans=bans, state=state, report=report
                )
        if not owner:
            await self.app(scope, receive, send)
            return
        if not self._concurrency:
            if self._headers and kind == "http":
                await self.app(scope, receive, _with_headers(send, report, self._render))
            else:
                await self.app(scope, receive, send)
            return
        exchange = _Exchange(send, receive, report, limiter, self._headers and kind == "http")
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            if report.held:
                await self._limiter.release(report)


def _with_headers(
    send: Send, report: RateLimitReport, render: Callable[[RateLimitReport], list[_Header]]
) -> Send:
    """``send`` adding the ``RateLimit`` headers ``render`` makes of ``report`` when the
    response starts (no slot is held: nothing else to watch). It hands back the awaitable of
    ``send`` itself, so a message costs no coroutine of its own."""

    def send_with_headers(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start" and report.batches and not report.rendered:
            added = render(report)
            if added:
                # Stages own the messages they are given (the terminals send fresh ones), as
                # the security-headers stage does.
                message["headers"] = [*message.get("headers", ()), *added]
        return send(message)

    return send_with_headers


class _Exchange:
    """One request's wrapped ``send`` (and ``receive``, when slots are held): adds the headers
    when the response starts and releases slots once the response is complete or the client
    has gone."""

    __slots__ = ("_headers", "_limiter", "_receive", "_report", "_send")

    def __init__(
        self, send: Send, receive: Receive, report: RateLimitReport, limiter: Limiter, headers: bool
    ) -> None:
        self._send = send
        self._receive = receive
        self._report = report
        self._limiter = limiter
        self._headers = headers

    async def send(self, message: Message) -> None:
        report = self._report
        if (
            self._headers
            and message["type"] == "http.response.start"
            and report.batches
            and not report.rendered
        ):
            added = self._limiter.renderer.render(report)
            if added:
                # Stages own the messages they are given (the terminals send fresh ones), as
                # the security-headers stage does.
                message["headers"] = [*message.get("headers", ()), *added]
        await self._send(message)
        if report.held and message["type"] == "http.response.body" and not message.get("more_body"):
            # The response is complete: the slot is free although the app may still run
            # background tasks.
            await self._limiter.release(report)

    async def receive(self) -> Message:
        message = await self._receive()
        if self._report.held and message["type"] in _DISCONNECTS:
            await self._limiter.release(report=self._report)
        return message


class GateStage(_LimitStage):
    """Step 5: bans, strike blocks and the policies decided before authentication.

    ``strikes``: inspection strikes are on, so the client's penalty record is checked even when
    rate-limit bans are off (:data:`~bastion.ratelimit.core.PENALTIES_ONLY`)."""

    _stage = "gate"

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: RateLimitConfig,
        deps: Deps,
        limiter: Limiter,
        strikes: bool = False,
    ) -> None:
        super().__init__(app, config=config, deps=deps, limiter=limiter)
        bans = config.bans
        if bans.enabled:
            self._bans = BanRule(
                threshold=bans.threshold,
                window=bans.window,
                durations=tuple(bans.durations),
                reset_after=bans.reset_after,
            )
        elif strikes:
            self._bans = PENALTIES_ONLY


class RateLimitStage(_LimitStage):
    """Step 11: the policies keyed by who the principal is."""

    _stage = "late"

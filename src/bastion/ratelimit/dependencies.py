"""Per-route rate limits inside a wrapped app: ``rate_limit("policy")`` for FastAPI and
``limited(endpoint, "policy")`` for Starlette.

Both apply a configured ``[[ratelimit.policies]]`` entry by name to that route, with the
policy's own key, algorithm and exemptions and regardless of its ``match``. A policy the stages
already applied to the request is not counted twice. Over the limit the route answers 429
``rate_limited`` exactly as the stages do; the ``RateLimit`` headers of an allowed request are
added by the rate-limit stage that first saw the request, when the response starts (this
dependency records its decision in that stage's per-request report), so they appear whatever
the route returns.

They need an app wrapped by ``Bastion(settings).wrap(app)`` with rate limiting enabled, and a
policy of that name: otherwise they fail loudly rather than let every request through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bastion.http.state import state_of
from bastion.ratelimit.headers import REPORT_KEY, RateLimitReport
from bastion.ratelimit.limiter import LIMITER_KEY, Limiter

__all__ = ["limited", "rate_limit"]


async def apply_policy(policy: str, request: Request) -> None:
    """Apply the policy named ``policy`` to ``request``; raises the 429 when over the limit."""
    shared = request.scope.get("state", {})
    limiter = shared.get(LIMITER_KEY)
    report = shared.get(REPORT_KEY)
    if not isinstance(limiter, Limiter) or not isinstance(report, RateLimitReport):
        raise RuntimeError(
            "bastion.rate_limit needs an app wrapped by Bastion with rate limiting enabled"
        )
    compiled = limiter.policies.by_name.get(policy)
    if compiled is None:
        raise RuntimeError(f"no rate-limit policy is named {policy!r}")
    if report.applied(policy):
        return
    state = state_of(request.scope)
    check = limiter.policies.check(compiled, request.scope, state)
    if check is None:
        return
    client = limiter.policies.client(state.client_ip)[0]
    await limiter.admit([check], client=client, bans=None, state=state, report=report)


def rate_limit(policy: str) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency applying the policy named ``policy`` to the route:
    ``@app.get("/export", dependencies=[Depends(rate_limit("exports"))])``."""

    async def dependency(request: Request) -> None:
        await apply_policy(policy, request)

    dependency.__name__ = f"rate_limit_{policy.replace('-', '_').replace('.', '_')}"
    return dependency


def limited(endpoint: Callable[[Request], Any], policy: str) -> Callable[[Request], Awaitable[Any]]:
    """A Starlette endpoint applying the policy named ``policy`` before ``endpoint`` runs:
    ``Route("/export", limited(export, "exports"))``. Synchronous endpoints still run in the
    thread pool, as Starlette would run them."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Any:
        await apply_policy(policy, request)
        if inspect.iscoroutinefunction(endpoint):
            return await endpoint(request)
        return await run_in_threadpool(endpoint, request)

    return wrapped

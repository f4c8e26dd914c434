"""Load shedding: a bound on requests in flight, with a short bounded wait for a slot.

When every slot is taken a request may wait (at most ``max_queue`` of them, each at most
``queue_timeout``) for a finishing request to hand its slot over; past that it gets 503
``overloaded`` with ``Retry-After`` at once, which is far cheaper for everyone than queueing
without bound. Health and readiness probes are answered before this stage and never shed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.pipeline.config import SheddingConfig

__all__ = ["SheddingStage"]


class SheddingStage:
    """Admits at most ``max_inflight`` requests at once; the rest wait briefly or get 503."""

    def __init__(self, app: ASGIApp, *, config: SheddingConfig, deps: Deps) -> None:
        self.app = app
        self._capacity = config.max_inflight
        self._max_queue = config.max_queue
        self._timeout = config.queue_timeout
        self._retry_after = str(config.retry_after)
        self._shed = deps.metrics.shed
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.inflight < self._capacity and not self._waiters:
            self.inflight += 1
        else:
            await self._wait_for_slot()
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _wait_for_slot(self) -> None:
        if len(self._waiters) >= self._max_queue or self._timeout <= 0:
            self._refuse()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self._release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._refuse()

    def _release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1

    def _refuse(self) -> None:
        self._shed.inc()
        raise BastionError(
            "overloaded",
            "Too many requests in flight; retry shortly",
            headers={"Retry-After": self._retry_after},
            extensions={"retry_after": int(self._retry_after)},
        )

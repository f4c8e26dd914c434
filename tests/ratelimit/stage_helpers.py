"""Pieces the rate-limit stage tests put around the stages: a stand-in for auth and a terminal."""

from __future__ import annotations

from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.principal import Principal
from bastion.http.state import state_of


class FakeAuth:
    """Stands in for the auth stage: the principal named by ``X-Test-User``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"x-test-user":
                state_of(scope).principal = Principal(subject=value.decode(), method="bearer")
        await self.app(scope, receive, send)


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

"""Client address from trusted proxies' forwarding headers.

Present in the chain only when ``client_ip.trusted_proxies`` is set; otherwise the request-id
stage has already recorded the peer as the client and nothing here runs. The resolved address,
scheme and host replace the peer's in the request state — never in ``scope["client"]``, which
stays the real peer for anything that needs it.
"""

from __future__ import annotations

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.state import state_of
from bastion.pipeline.config import ClientIpConfig

__all__ = ["ClientIpStage"]


class ClientIpStage:
    """Resolves the client address for requests arriving through trusted proxies."""

    def __init__(self, app: ASGIApp, *, config: ClientIpConfig, deps: Deps) -> None:
        self.app = app
        self._resolver = deps.client_ips

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" or scope["type"] == "websocket":
            client = scope.get("client")
            resolved = self._resolver.resolve(
                client[0] if client else None, scope.get("scheme", "http"), scope["headers"]
            )
            state = state_of(scope)
            state.client_ip = resolved.ip
            if resolved.scheme != state.scheme:
                state.scheme = (
                    resolved.scheme
                    if scope["type"] == "http"
                    else ("wss" if resolved.scheme == "https" else "ws")
                )
            state.forwarded_host = resolved.host
        await self.app(scope, receive, send)

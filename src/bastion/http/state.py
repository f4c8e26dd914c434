"""Per-request state shared by the stages, kept at ``scope["state"]["bastion"]``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.http.asgi import Scope

if TYPE_CHECKING:
    from bastion.http.routes import Route

__all__ = ["RequestState", "state_of"]


class RequestState:
    """What the stages learn about one request; never stored on a stage instance."""

    __slots__ = (
        "client_ip",
        "csp_nonce",
        "forwarded_host",
        "principal",
        "request_id",
        "route",
        "scheme",
        "started",
        "status",
        "user",
    )

    def __init__(self, request_id: str, started: float, client_ip: str, scheme: str) -> None:
        self.request_id = request_id
        self.started = started
        self.client_ip = client_ip
        """The resolved client address (the peer, unless a trusted proxy said otherwise)."""
        self.scheme = scheme
        """``http``/``https`` as the client used it (a trusted proxy's word counts)."""
        self.forwarded_host: str | None = None
        self.route: Route | None = None
        self.principal: Any = None
        self.user: str | None = None
        self.csp_nonce: str | None = None
        self.status = 0


def state_of(scope: Scope) -> RequestState:
    """The :class:`RequestState` of ``scope``; the request-id stage always creates it."""
    state: RequestState = scope["state"]["bastion"]
    return state

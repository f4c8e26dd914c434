"""The verified identity of a request, as every stage sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from bastion.http.asgi import Scope

__all__ = ["Principal", "PrincipalResolver"]

AuthMethod = Literal["bearer", "api_key", "session", "external"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, established by verifying a credential (never by trusting a header)."""

    subject: str
    """Stable user (or service) id."""
    method: AuthMethod
    """How the credential was presented and verified."""
    username: str | None = None
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    session_id: str | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)


class PrincipalResolver(Protocol):
    """Verifies the credential a request carries, if any; ``None`` when it carries none that
    verify. Implementations cache verified credentials so a second call is cheap."""

    async def __call__(self, scope: Scope) -> Principal | None: ...

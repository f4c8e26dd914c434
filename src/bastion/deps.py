"""What every stage may depend on, built once by :mod:`bastion.engine`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bastion.http.client_ip import ClientIpResolver
from bastion.http.routes import RouteTable
from bastion.observe.metrics import Metrics

if TYPE_CHECKING:
    from bastion.audit.events import AuditSink
    from bastion.cache.tiered import Cache
    from bastion.http.principal import PrincipalResolver
    from bastion.observe.tracing import Tracing
    from bastion.settings import Settings
    from bastion.store.stores import Stores

__all__ = ["Deps"]


@dataclass(slots=True)
class Deps:
    """Shared services handed to each stage's constructor (``deps=``)."""

    settings: Settings
    metrics: Metrics
    routes: RouteTable
    prefix: str
    """Reserved path prefix of Bastion's own endpoints (``/_bastion``)."""
    stores: Stores | None = None
    """Durable stores; started by the engine at start-up."""
    principal_resolver: PrincipalResolver | None = None
    """Verifies Bastion credentials on demand (stages before ``auth`` that must know the
    verified principal, such as CSRF exemption for bearer-authenticated requests)."""
    audit: AuditSink | None = None
    """Where security-relevant events go (DESIGN.md §9)."""
    tracing: Tracing | None = None
    """The engine's tracer when ``[tracing]`` is enabled; ``None`` (no tracing work) otherwise."""
    cache: Cache | None = None
    """The engine's tiered cache (``[cache]``), set once the engine has built it."""
    client_ips: ClientIpResolver = field(init=False)
    """The one trust rule for client addresses (``[client_ip]``), shared by every stage that
    needs it, with one cache of normalised peers."""

    def __post_init__(self) -> None:
        config = self.settings.client_ip
        self.client_ips = ClientIpResolver(config.trusted_proxies, config.header)

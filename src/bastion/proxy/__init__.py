"""Gateway terminal: HTTP and WebSocket reverse proxying over pooled upstream connections.

``Proxy`` is imported on first use: route matching (``bastion.http.routes``) imports this
package's configuration models, and the terminal itself depends on route matching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.proxy.config import ProxyConfig, RouteConfig

if TYPE_CHECKING:
    from bastion.proxy.gateway import Proxy

__all__ = ["Proxy", "ProxyConfig", "RouteConfig"]


def __getattr__(name: str) -> Any:
    if name == "Proxy":
        from bastion.proxy.gateway import Proxy

        return Proxy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Configuration of the gateway: upstream routes and the upstream connection pool."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from bastion.config_types import ByteSize, ConfigModel, Duration

__all__ = ["ProxyConfig", "RouteConfig"]


class RouteConfig(ConfigModel):
    """``[[routes]]``: requests whose path starts with ``prefix`` (and, if set, whose host matches
    ``host``) go to ``upstream``. The longest matching prefix wins; a route with a host beats one
    without. ``name`` labels metrics and logs and lets later stages attach their policies."""

    name: str = ""
    """Route name used in metrics, logs and policies; defaults to the prefix."""
    prefix: str = "/"
    """Path prefix (segment-aware: ``/api`` matches ``/api`` and ``/api/x``, not ``/apix``)."""
    host: str | None = None
    """Exact host (``api.example.com``) or one-label wildcard (``*.example.com``)."""
    upstream: str = ""
    """Base URL of the service (``http://127.0.0.1:9000``); its path, if any, is prepended."""
    strip_prefix: bool = False
    """Remove ``prefix`` from the path before forwarding."""
    preserve_host: bool = False
    """Forward the client's ``Host`` instead of the upstream's."""
    connect_timeout: Duration | None = None
    """Overrides ``proxy.connect_timeout`` for this route."""
    read_timeout: Duration | None = None
    """Overrides ``proxy.read_timeout`` for this route."""
    max_body_bytes: ByteSize | None = None
    """Overrides ``limits.max_body_bytes`` for this route."""

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a route prefix starts with '/'")
        return value if value == "/" else value.rstrip("/")

    @field_validator("host")
    @classmethod
    def _host_lower(cls, value: str | None) -> str | None:
        return value.lower() if value else None

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("upstream URL cannot carry a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_name(self) -> RouteConfig:
        if not self.name:
            object.__setattr__(self, "name", self.prefix)
        return self


class ProxyConfig(ConfigModel):
    """``[proxy]``: the pooled upstream client shared by every route."""

    connect_timeout: Duration = 5.0
    """Time to open a connection to the upstream → 502 ``upstream_unavailable``."""
    read_timeout: Duration = 60.0
    """Longest wait for the upstream's response head or next body chunk → 504
    ``upstream_timeout``; ``0`` waits without limit."""
    pool_size: int = Field(default=256, ge=1)
    """Idle keep-alive connections kept per upstream."""
    keepalive_timeout: Duration = 30.0
    """Idle connections older than this are closed."""
    upstream_ca_file: str | None = None
    """PEM file of certificate authorities trusted for ``https://`` upstreams (an internal CA);
    default: the system's trust store. Certificates and host names are always verified."""
    websocket_max_message: ByteSize = 1024 * 1024
    """Largest WebSocket message relayed; larger ones close the socket with 1009."""
    websocket_max_queue: int = Field(default=32, ge=1)
    """Messages buffered towards a slow consumer before the proxy stops reading the other side."""
    websocket_heartbeat: Duration = 30.0
    """Ping interval towards the upstream WebSocket; 0 disables."""

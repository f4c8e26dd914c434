"""Configuration of metrics and logs."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from bastion.config_types import Cidr, ConfigModel

__all__ = ["AlertsConfig", "LoggingConfig", "MetricsConfig", "TracingConfig"]


class MetricsConfig(ConfigModel):
    """``[metrics]``: Prometheus exposition at ``/_bastion/metrics``."""

    enabled: bool = True
    """Serve ``/_bastion/metrics``."""
    allow: list[Cidr] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    """Client networks allowed to scrape (resolved client IP); default loopback only."""
    latency_buckets: list[float] = Field(
        default_factory=lambda: [
            0.0005,
            0.001,
            0.0025,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
        ]
    )
    """Histogram buckets (seconds) of ``bastion_http_request_duration_seconds``."""


class LoggingConfig(ConfigModel):
    """``[logging]``: structured logs on standard output."""

    format: Literal["json", "console"] = "json"
    """``json`` (one object per line) or ``console`` (human-readable)."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    access_log: bool = True
    """One line per request: request_id, client_ip, method, route, path, status, duration_ms,
    bytes_in, bytes_out, user."""


class TracingConfig(ConfigModel):
    """``[tracing]``: OpenTelemetry spans per request and per stage."""

    enabled: bool = False
    """Record and export spans; off: no tracing code runs at all."""


class AlertsConfig(ConfigModel):
    """``[alerts]``: rules over sliding windows, delivered to a webhook and the log."""

    enabled: bool = False
    """Evaluate the alert rules."""

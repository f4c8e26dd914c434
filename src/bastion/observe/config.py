"""Configuration of metrics and logs."""

from __future__ import annotations

import ipaddress
from itertools import pairwise
from typing import Literal

from pydantic import Field, field_validator

from bastion.config_types import Cidr, ConfigModel, Duration, SecretValue

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "AlertsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "TracingConfig",
]


DEFAULT_LATENCY_BUCKETS = (
    0.0001,
    0.0002,
    0.0003,
    0.0004,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
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
)
"""Request latency buckets (seconds): 0.1 ms resolution at the low end, where an in-process
pipeline (tens of microseconds) and a gateway on a local network (a few hundred) answer."""


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
    latency_buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_LATENCY_BUCKETS))
    """Histogram buckets (seconds) of ``bastion_http_request_duration_seconds``: by default
    0.1 ms steps up to 0.5 ms, where a gateway's own requests fall, then coarser up to 10 s."""

    @field_validator("latency_buckets")
    @classmethod
    def _buckets(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one latency bucket is needed")
        if value[0] <= 0 or any(a >= b for a, b in pairwise(value)):
            raise ValueError("latency buckets are positive and strictly increasing")
        return value


class LoggingConfig(ConfigModel):
    """``[logging]``: structured logs on standard output."""

    format: Literal["json", "console"] = "json"
    """``json`` (one object per line) or ``console`` (human-readable)."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    access_log: bool = True
    """One line per request: request_id, client_ip, method, route, path, status, duration_ms,
    bytes_in, bytes_out, user (and trace_id, span_id when tracing is on)."""
    access_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of successful (1xx-3xx) access-log lines kept, chosen by the request id so a
    request's line is kept or dropped alike wherever it is decided. Refused and failed requests
    (4xx, 5xx, none sent), slow ones and those whose trace is sampled are always logged."""
    access_slow_threshold: Duration = 1.0
    """Requests taking at least this long are always logged, whatever the sample rate."""


class TracingConfig(ConfigModel):
    """``[tracing]``: OpenTelemetry spans per request and per stage."""

    enabled: bool = False
    """Record and export spans; off: no tracing code runs at all (the OpenTelemetry SDK is not
    even imported)."""
    service_name: str = Field(default="bastion", min_length=1)
    """``service.name`` of the exported spans."""
    exporter: Literal["otlp", "console", "none"] = "otlp"
    """``otlp`` (OTLP over HTTP/protobuf to ``endpoint``), ``console`` (JSON on standard
    output) or ``none`` (spans are created and propagated, not exported)."""
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """OTLP/HTTP traces endpoint (a collector's ``/v1/traces``)."""
    headers: dict[str, SecretValue] = Field(default_factory=dict)
    """Extra HTTP headers of every export request (a collector's API key: ``env:NAME``)."""
    timeout: Duration = 10.0
    """Time allowed for one export request."""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of new traces recorded, by trace id. A request continuing a trusted incoming
    trace follows its parent's decision instead."""
    trust_incoming: Literal["proxies", "all", "none"] = "proxies"
    """Whose ``traceparent``/``tracestate`` is continued: ``proxies`` (peers in
    ``client_ip.trusted_proxies``), ``all`` or ``none``. An untrusted context never becomes the
    parent (a client cannot choose trace ids or force sampling); it is kept as a span link."""
    stage_spans: bool = False
    """A child span per pipeline stage (costs a span per stage per request)."""
    max_queue: int = Field(default=2048, ge=1)
    """Finished spans waiting for export; when full, new ones are dropped."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("the OTLP endpoint is an http:// or https:// URL")
        return value


class AlertsConfig(ConfigModel):
    """``[alerts]``: rules over sliding windows, delivered to a webhook and the log."""

    enabled: bool = False
    """Evaluate the alert rules."""

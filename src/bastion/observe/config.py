"""Configuration of metrics and logs."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from itertools import pairwise
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from bastion.config_types import Cidr, ConfigModel, Duration, SecretValue, unique_names

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "AlertRuleConfig",
    "AlertWebhookConfig",
    "AlertsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "TracingConfig",
    "webhook_key",
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
    """``otlp`` (OTLP over HTTP/protobuf to ``endpoint``), ``console`` (one JSON line per span
    on standard error, apart from the logs) or ``none`` (spans are created and propagated, not
    exported)."""
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


AlertKind = Literal[
    "error_rate", "latency_p95", "auth_failures", "bans", "waf_blocks", "store_errors"
]
"""What an alert rule measures (see ``docs/alerts.md``)."""

REQUEST_KINDS = frozenset({"error_rate", "latency_p95"})
"""Rule kinds measured over answered requests; the others count events."""
PER_IP_KINDS = frozenset({"auth_failures", "bans", "waf_blocks"})
"""Rule kinds whose events carry a client address, so ``per = "ip"`` is possible."""

_RULE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MIN_SECRET_BYTES = 24


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_`` prefix."""
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is 'whsec_' followed by base64") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(f"the webhook secret must decode to at least {_MIN_SECRET_BYTES} bytes")
    return key


class AlertRuleConfig(ConfigModel):
    """``[[alerts.rules]]``: one condition over a sliding window. It fires once when the
    measured value goes above ``threshold`` and resolves once it has stayed at or below it for
    ``resolve_after``."""

    name: str
    """Rule name: in the payload, the log line and the ``rule`` label of the alert metrics."""
    kind: AlertKind
    """``error_rate`` (percent of answered requests with a 5xx status), ``latency_p95``
    (milliseconds), ``auth_failures`` (failed logins, second-factor codes and password
    re-authentications, throttled logins, reused refresh tokens), ``bans`` (rate-limit bans
    and inspection strike blocks), ``waf_blocks`` (requests refused by inspection),
    ``store_errors`` (failed store operations)."""
    threshold: float = Field(ge=0, le=1e12, allow_inf_nan=False)
    """Fires when the value is above this: a percentage for ``error_rate``, milliseconds for
    ``latency_p95``, a number of events in the window for the other kinds (finite)."""
    window: Duration = 60.0
    """Length of the sliding window (1s to 1d), kept as 60 slots (12 per client address)."""
    per: Literal["overall", "ip"] = "overall"
    """``overall`` or ``ip`` (one episode per client address: ``auth_failures``, ``bans`` and
    ``waf_blocks`` only)."""
    min_requests: int = Field(default=20, ge=1)
    """``error_rate`` and ``latency_p95``: fewer answered requests in the window never fire."""
    routes: list[str] = Field(default_factory=list)
    """``error_rate`` and ``latency_p95``: only requests of these ``[[routes]]`` names (the
    metrics' ``route`` label; ``_none`` for unrouted requests); empty: all requests."""
    fire_after: Duration = Field(default=0.0, le=7 * 86400)
    """The condition must hold this long before the alert fires (``0s``: at the first
    evaluation that sees it; at most 7d)."""
    resolve_after: Duration = Field(default=60.0, le=7 * 86400)
    """The condition must have stopped holding this long before the alert resolves, so a value
    hovering around the threshold does not flap (at most 7d)."""
    severity: Literal["info", "warning", "critical"] = "warning"
    """Passed along in the payload and the log line."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RULE_NAME.fullmatch(value):
            raise ValueError("a rule name is 1-64 of a-z, 0-9, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> AlertRuleConfig:
        if not 1.0 <= self.window <= 86400.0:
            raise ValueError("window must be between 1s and 1d")
        if self.per == "ip" and self.kind not in PER_IP_KINDS:
            raise ValueError(f'per = "ip" is not available for {self.kind} rules')
        if self.routes and self.kind not in REQUEST_KINDS:
            raise ValueError("routes only filter error_rate and latency_p95 rules")
        if self.kind == "error_rate" and self.threshold >= 100:
            raise ValueError("an error_rate threshold is a percentage below 100")
        return self


def _check_webhook_url(value: str) -> None:
    """An absolute ``http``/``https`` URL with a host, a valid port and no whitespace."""
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError("the webhook url must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"the webhook url is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("the webhook url is an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the webhook url needs a host")
    if port == 0:
        raise ValueError("the webhook url has port 0")
    if parts.fragment:
        raise ValueError("the webhook url must not have a fragment")


class AlertWebhookConfig(ConfigModel):
    """``[alerts.webhook]``: a JSON POST per firing and resolution, signed per the Standard
    Webhooks scheme (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)."""

    url: str = ""
    """Receiver URL (``http``/``https``); empty: alerts go to the log only."""
    secret: SecretValue | None = None
    """Signing secret: ``whsec_`` and the base64 of at least 24 random bytes (required with
    ``url``); ``env:NAME`` or ``file:/path`` keep it out of the file."""
    previous_secrets: list[SecretValue] = Field(default_factory=list)
    """Older secrets still signed with during a rotation (one more signature each)."""
    timeout: Duration = Field(default=10.0, gt=0, le=300)
    """Time allowed for one delivery attempt (above 0s, at most 5m)."""
    max_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per alert, the first included."""
    backoff: Duration = Field(default=1.0, ge=0, le=3600)
    """Delay before the first retry (at most 1h); doubled for each later one, with jitter."""
    max_backoff: Duration = Field(default=60.0, ge=0, le=86400)
    """Longest delay between attempts (at most 1d), also the most a ``Retry-After`` is
    honoured for."""
    queue_size: int = Field(default=256, ge=1, le=100_000)
    """Alerts waiting for delivery; when full the oldest is dropped (counted and logged)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value:
            _check_webhook_url(value)
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_key(value.get_secret_value())
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, values: list[SecretStr]) -> list[SecretStr]:
        for value in values:
            webhook_key(value.get_secret_value())
        return values

    @model_validator(mode="after")
    def _complete(self) -> AlertWebhookConfig:
        if self.url and self.secret is None:
            raise ValueError("a webhook url needs a secret")
        if self.max_backoff < self.backoff:
            raise ValueError("max_backoff must be at least backoff")
        return self


UNROUTED = "_none"
"""The route name of requests no ``[[routes]]`` entry matched (the metrics' ``route`` label)."""


class AlertsConfig(ConfigModel):
    """``[alerts]``: rules over sliding windows, delivered to a webhook and the log."""

    enabled: bool = False
    """Evaluate the alert rules; off: nothing is observed and no task runs."""
    interval: Duration = Field(default=5.0, le=3600)
    """How often the rules are evaluated (100ms to 1h). Every rule's ``window`` must be at
    least twice this, so no event leaves a window between two evaluations unseen."""
    max_tracked_ips: int = Field(default=10_000, ge=1, le=100_000)
    """Clients (an IPv4 address, an IPv6 /64) counted separately by ``per = "ip"`` rules (each
    rule, at most 100,000); when full, clients idle for a whole window make room, else new ones
    count together as ``other``."""
    exclude_refusals: bool = True
    """``error_rate`` and ``latency_p95`` leave out the requests Bastion itself refused with a
    4xx problem (rate limits, bans, blocked attacks, bad credentials), so a flood of refused
    traffic neither dilutes the error rate nor hides slow answers. 5xx problems (upstream
    failures, shedding) always count."""
    rules: list[AlertRuleConfig] = Field(default_factory=list)
    """The rules; empty: the built-in set (``docs/alerts.md``)."""
    webhook: AlertWebhookConfig = Field(default_factory=AlertWebhookConfig)
    """Where firing and resolved alerts are posted, besides the log."""

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError("interval must be at least 100ms")
        return value

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRuleConfig]) -> list[AlertRuleConfig]:
        return unique_names(rules, "alert rules")

    @model_validator(mode="after")
    def _windows(self) -> AlertsConfig:
        for index, rule in enumerate(self.rules):
            if rule.window < 2 * self.interval:
                raise ValueError(
                    f"alerts.rules.{index}.window ({rule.window:g}s) must be at least twice"
                    f" alerts.interval ({self.interval:g}s)"
                )
        if not self.rules and self.interval > 30:
            raise ValueError(
                "alerts.interval must be at most 30s with the built-in rules (their shortest"
                " window is 60s)"
            )
        return self

    def unknown_routes(self, route_names: set[str]) -> list[tuple[int, list[str]]]:
        """``(rule index, names)`` of the rules naming routes outside ``route_names``."""
        found = []
        for index, rule in enumerate(self.rules):
            unknown = sorted(set(rule.routes) - route_names - {UNROUTED})
            if unknown:
                found.append((index, unknown))
        return found

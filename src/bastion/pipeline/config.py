"""Configuration models of the generic pipeline stages (one class per stage)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bastion.config_types import ByteSize, Cidr, ConfigModel, Duration, SecretValue

__all__ = [
    "BodyLimitRule",
    "ClientIpConfig",
    "CompressionConfig",
    "CorsConfig",
    "CsrfConfig",
    "HeadersConfig",
    "HstsConfig",
    "LimitsConfig",
    "RequestIdConfig",
    "SheddingConfig",
]


class RequestIdConfig(ConfigModel):
    """``[request_id]``: the request id accepted from clients or generated, echoed on responses."""

    header: str = "X-Request-ID"
    """Header carrying the id in both directions."""
    trust_incoming: bool = True
    """Accept a client's id when it is 1-128 characters of ``[A-Za-z0-9._-]``; else generate."""


class ClientIpConfig(ConfigModel):
    """``[client_ip]``: which peers may tell Bastion the original client address."""

    trusted_proxies: list[Cidr] = Field(default_factory=list)
    """Networks whose forwarding headers are believed. Default none: the peer is the client."""
    headers: list[Literal["x-forwarded-for", "forwarded"]] = Field(
        default_factory=lambda: ["forwarded", "x-forwarded-for"]
    )
    """Forwarding headers read from trusted peers, first present wins."""


class SheddingConfig(ConfigModel):
    """``[shedding]``: bound the requests in flight; excess waits briefly, then gets 503."""

    enabled: bool = True
    max_inflight: int = Field(default=1000, ge=1)
    """Requests processed at once by this process."""
    max_queue: int = Field(default=100, ge=0)
    """Requests allowed to wait for a slot when all are taken; beyond it, 503 at once."""
    queue_timeout: Duration = 0.1
    """How long a queued request waits for a slot before 503 ``overloaded``."""
    retry_after: int = Field(default=1, ge=0)
    """``Retry-After`` seconds sent with 503 ``overloaded``."""


class BodyLimitRule(ConfigModel):
    """``[[limits.body]]``: a body size limit for matching paths and content types."""

    path: str = "/**"
    """Path glob (``*`` within a segment, ``**`` across)."""
    content_types: list[str] = Field(default_factory=list)
    """Media types (``multipart/form-data``); empty matches any."""
    max_bytes: ByteSize

    @field_validator("content_types")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [item.strip().lower() for item in value]


class LimitsConfig(ConfigModel):
    """``[limits]``: request size limits, enforced before and while a body streams."""

    enabled: bool = True
    max_header_bytes: ByteSize = 16 * 1024
    """Total size of the header block (names, values and separators) → 431."""
    max_url_bytes: ByteSize = 8 * 1024
    """Length of path plus query string → 414."""
    max_body_bytes: ByteSize = 10 * 1024 * 1024
    """Default body limit → 413; ``0`` means no limit."""
    body: list[BodyLimitRule] = Field(default_factory=list)
    """Per-path and content-type body limits; the first matching rule wins."""


class CorsConfig(ConfigModel):
    """``[cors]``: cross-origin access. Off until ``origins`` or ``origin_patterns`` are set."""

    origins: list[str] = Field(default_factory=list)
    """Exact allowed origins (``https://app.example.com``); ``"*"``: any, without credentials."""
    origin_patterns: list[str] = Field(default_factory=list)
    """Origin globs where ``*`` stands for one DNS label (``https://*.example.com``)."""
    allow_credentials: bool = False
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-api-key", "x-request-id"]
    )
    """Request headers a preflight may ask for (CORS-safelisted ones are always allowed)."""
    expose_headers: list[str] = Field(default_factory=lambda: ["x-request-id"])
    max_age: Duration = 600.0
    """How long browsers may cache a preflight answer."""

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.origins:
            raise ValueError("origins = ['*'] cannot be combined with allow_credentials = true")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.origins or self.origin_patterns)


class CsrfConfig(ConfigModel):
    """``[csrf]``: signed double-submit tokens for cookie-authenticated unsafe requests."""

    enabled: bool = False
    session_cookie: str = "session"
    """Cookie that authenticates the browser; requests without it are not cookie-authenticated."""
    cookie_name: str = "bastion_csrf"
    """Cookie holding the CSRF token (readable by scripts so they can echo it)."""
    header_name: str = "X-CSRF-Token"
    """Header (or form field ``csrf_token``) echoing the token on unsafe requests."""
    secrets: list[SecretValue] = Field(default_factory=list)
    """Signing keys, newest first; tokens signed with any of them verify. Generated if empty."""
    paths: list[str] = Field(default_factory=lambda: ["/**"])
    """Path globs the check applies to."""
    exempt_paths: list[str] = Field(default_factory=list)
    trusted_origins: list[str] = Field(default_factory=list)
    """Other origins allowed to send unsafe requests (besides the request's own)."""
    cookie_secure: bool = True
    cookie_samesite: Literal["strict", "lax", "none"] = "lax"
    token_ttl: Duration = 43200.0


class HstsConfig(ConfigModel):
    """``[headers.hsts]``: Strict-Transport-Security, sent on HTTPS only."""

    enabled: bool = True
    max_age: Duration = 31536000.0
    include_subdomains: bool = True
    preload: bool = False


class HeadersConfig(ConfigModel):
    """``[headers]``: security headers on every response, Bastion's own errors included."""

    enabled: bool = True
    hsts: HstsConfig = Field(default_factory=HstsConfig)
    content_security_policy: str = "default-src 'none'; frame-ancestors 'none'"
    """CSP sent when the response has none; empty string disables. ``{nonce}`` is replaced by the
    per-request nonce (and ``csp_nonce`` is then generated for every request)."""
    content_type_options: bool = True
    """``X-Content-Type-Options: nosniff``."""
    referrer_policy: str = "no-referrer"
    permissions_policy: str = "camera=(), microphone=(), geolocation=(), payment=()"
    cross_origin_opener_policy: str = "same-origin"
    frame_options: str = "DENY"
    """``X-Frame-Options``; empty string disables."""
    remove_response_headers: list[str] = Field(default_factory=lambda: ["server", "x-powered-by"])
    """Headers removed from upstream and app responses."""
    override: bool = False
    """Replace security headers the upstream already set (default: keep the upstream's)."""


class CompressionConfig(ConfigModel):
    """``[compression]``: response compression negotiated by ``Accept-Encoding`` q-values."""

    enabled: bool = True
    min_size: ByteSize = 1024
    """Responses smaller than this (when their length is known) are sent as they are."""
    algorithms: list[Literal["zstd", "br", "gzip"]] = Field(
        default_factory=lambda: ["zstd", "br", "gzip"]
    )
    """Server preference order among encodings the client accepts with equal q."""
    gzip_level: int = Field(default=6, ge=1, le=9)
    brotli_quality: int = Field(default=4, ge=0, le=11)
    zstd_level: int = Field(default=3, ge=1, le=22)
    excluded_types: list[str] = Field(
        default_factory=lambda: [
            "image/*",
            "video/*",
            "audio/*",
            "font/woff",
            "font/woff2",
            "application/zip",
            "application/gzip",
            "application/x-gzip",
            "application/zstd",
            "application/x-brotli",
            "application/octet-stream",
            "application/pdf",
            "text/event-stream",
        ]
    )
    """Media types never compressed (already compressed, or streamed events); ``*`` wildcards."""

"""Configuration models of the generic pipeline stages (one class per stage)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from bastion.config_types import ByteSize, Cidr, ConfigModel, Duration, SecretValue
from bastion.http.paths import check_globs

__all__ = [
    "BodyLimitRule",
    "ClientIpConfig",
    "CompressionAlgorithm",
    "CompressionConfig",
    "CorsConfig",
    "CsrfConfig",
    "HeadersConfig",
    "HstsConfig",
    "LimitsConfig",
    "RequestIdConfig",
    "SheddingConfig",
    "normalize_origin",
]


class RequestIdConfig(ConfigModel):
    """``[request_id]``: the request id accepted from clients or generated, echoed on responses."""

    header: str = "X-Request-ID"
    """Header carrying the id in both directions."""
    trust_incoming: bool = True
    """Accept a client's id when it is 1-128 characters of ``[A-Za-z0-9._-]``; else generate."""


ForwardingHeader = Literal["x-forwarded-for", "forwarded"]


class ClientIpConfig(ConfigModel):
    """``[client_ip]``: which peers may tell Bastion the original client address."""

    trusted_proxies: list[Cidr] = Field(default_factory=list)
    """Networks whose forwarding headers are believed. Default none: the peer is the client."""
    header: ForwardingHeader = "x-forwarded-for"
    """The one forwarding header read from trusted peers: ``x-forwarded-for`` (with
    ``X-Forwarded-Proto``/``-Host``) or RFC 7239 ``forwarded``. Only one: proxies append to the
    header they use and pass the other through as the client sent it, so reading both would let
    clients choose their own address."""


class SheddingConfig(ConfigModel):
    """``[shedding]``: bound the requests in flight; excess waits briefly, then gets 503."""

    enabled: bool = True
    """Bound the requests in flight."""
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
    """Largest body accepted → 413."""

    @field_validator("content_types")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [item.strip().lower() for item in value]


class LimitsConfig(ConfigModel):
    """``[limits]``: request size limits, enforced before and while a body streams."""

    enabled: bool = True
    """Enforce the size limits."""
    max_header_bytes: ByteSize = 16 * 1024
    """Total size of the header block (names, values and separators) → 431."""
    max_url_bytes: ByteSize = 8 * 1024
    """Length of path plus query string → 414."""
    max_body_bytes: ByteSize = 10 * 1024 * 1024
    """Default body limit → 413; ``0`` means no limit."""
    body: list[BodyLimitRule] = Field(default_factory=list)
    """Per-path and content-type body limits; the first matching rule wins."""


_ORIGIN = re.compile(r"^(https?)://([a-z0-9*.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _origin_parts(value: str, what: str) -> tuple[str, str, str]:
    """``(scheme, host, ":port" or "")`` of a lower-cased origin, without a default port."""
    text = value.strip().lower()
    match = _ORIGIN.match(text)
    if match is None:
        raise ValueError(
            f"invalid {what} {value!r}: use scheme://host[:port] (http or https, no path)"
        )
    scheme, host, port = match.groups()
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return scheme, host, ""
    return scheme, host, ":" + port


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case without a default port; ``ValueError`` otherwise.

    Browsers serialize origins this way, so a configured origin in any other spelling (upper
    case, ``:443`` on https, a trailing ``/``) would silently never match.
    """
    scheme, host, port = _origin_parts(value, "origin")
    if "*" in host:
        raise ValueError(f"invalid origin {value!r}: wildcards belong in origin_patterns")
    return f"{scheme}://{host}{port}"


def _normalize_origin_pattern(value: str) -> str:
    scheme, host, port = _origin_parts(value, "origin pattern")
    labels = host.split(".")
    if "*" not in labels:
        raise ValueError(f"origin pattern {value!r} has no '*' label; list it under origins")
    if any(label != "*" and _DNS_LABEL.match(label) is None for label in labels):
        raise ValueError(f"invalid origin pattern {value!r}: '*' must be a whole DNS label")
    if len(labels) < 3 or "*" in labels[-2:]:
        raise ValueError(
            f"origin pattern {value!r} is too broad: its last two labels must be literal"
        )
    return f"{scheme}://{host}{port}"


class CorsConfig(ConfigModel):
    """``[cors]``: cross-origin access. Off until ``origins`` or ``origin_patterns`` are set."""

    origins: list[str] = Field(default_factory=list)
    """Exact allowed origins (``https://app.example.com``); ``["*"]`` alone allows any origin
    (but never ``null``) and cannot be combined with credentials."""
    origin_patterns: list[str] = Field(default_factory=list)
    """Origin globs where ``*`` stands for exactly one DNS label (``https://*.example.com``);
    scheme and port must match exactly."""
    allow_credentials: bool = False
    """Send ``Access-Control-Allow-Credentials: true`` (cookies, HTTP auth) to allowed origins."""
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    """Methods a preflight may ask for; anything else is refused with ``cors_rejected``."""
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-api-key", "x-request-id"]
    )
    """Request headers a preflight may ask for (CORS-safelisted ones are always allowed)."""
    expose_headers: list[str] = Field(default_factory=lambda: ["x-request-id"])
    """Response headers scripts of allowed origins may read (``Access-Control-Expose-Headers``)."""
    max_age: Duration = 600.0
    """How long browsers may cache a preflight answer."""
    allow_private_network: bool = False
    """Answer Private Network Access preflights (``Access-Control-Allow-Private-Network``)."""

    @field_validator("origins")
    @classmethod
    def _normalize_origins(cls, value: list[str]) -> list[str]:
        if "*" in value:
            if len(value) > 1:
                raise ValueError("'*' must be the only entry of origins")
            return value
        for item in value:
            if item.strip().lower() == "null":
                raise ValueError(
                    "the 'null' origin cannot be allowed (any sandboxed page sends it)"
                )
        return [normalize_origin(item) for item in value]

    @field_validator("origin_patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        return [_normalize_origin_pattern(item) for item in value]

    @field_validator("allow_methods")
    @classmethod
    def _upper_methods(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("list the allowed methods explicitly; '*' is not supported")
        return [item.strip().upper() for item in value]

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("list the headers explicitly; '*' is not supported")
        return [item.strip().lower() for item in value]

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
    """Check CSRF tokens on cookie-authenticated unsafe requests."""
    session_cookie: str = "session"
    """Cookie that authenticates the browser; requests without it are not cookie-authenticated."""
    cookie_name: str = "bastion_csrf"
    """Cookie holding the CSRF token (readable by scripts so they can echo it)."""
    header_name: str = "X-CSRF-Token"
    """Header echoing the token cookie on unsafe requests."""
    secrets: list[SecretValue] = Field(default_factory=list)
    """Signing keys (at least 16 characters), newest first; tokens signed with any of them
    verify. When empty, keys come from the shared key store, the same for every instance."""
    paths: list[str] = Field(default_factory=lambda: ["/**"])
    """Path globs the check applies to."""
    exempt_paths: list[str] = Field(default_factory=list)
    """Path globs never checked (webhooks and other endpoints that are not cookie-driven)."""
    trusted_origins: list[str] = Field(default_factory=list)
    """Other origins allowed to send unsafe requests (besides the request's own)."""
    cookie_secure: bool = True
    """Mark the token cookie ``Secure`` (sent over HTTPS only)."""
    cookie_samesite: Literal["strict", "lax", "none"] = "lax"
    """``SameSite`` attribute of the token cookie; ``none`` requires ``cookie_secure``."""
    token_ttl: Duration = 43200.0
    """How long an issued token verifies (also the token cookie's ``Max-Age``)."""

    @field_validator("secrets")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(item.get_secret_value()) < 16 for item in value):
            raise ValueError("each CSRF secret must be at least 16 characters long")
        return value

    @field_validator("paths", "exempt_paths")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        return check_globs(value)

    @field_validator("trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [normalize_origin(item) for item in value]

    @model_validator(mode="after")
    def _samesite_none_needs_secure(self) -> CsrfConfig:
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ValueError("cookie_samesite = 'none' requires cookie_secure = true")
        if self.token_ttl < 1:
            raise ValueError("token_ttl must be at least one second")
        return self


class HstsConfig(ConfigModel):
    """``[headers.hsts]``: Strict-Transport-Security, sent on HTTPS only."""

    enabled: bool = True
    """Send HSTS on responses to HTTPS requests (directly or via a trusted proxy)."""
    max_age: Duration = 31536000.0
    """How long browsers remember to use HTTPS only."""
    include_subdomains: bool = True
    """Apply to every subdomain too."""
    preload: bool = False
    """Ask to be included in browsers' preload lists (hard to undo)."""


class HeadersConfig(ConfigModel):
    """``[headers]``: security headers on every response, Bastion's own errors included."""

    enabled: bool = True
    """Add the security headers below."""
    hsts: HstsConfig = Field(default_factory=HstsConfig)
    content_security_policy: str = "default-src 'none'; frame-ancestors 'none'"
    """CSP sent when the response has none; empty string disables. ``{nonce}`` is replaced by the
    per-request nonce (and ``csp_nonce`` is then generated for every request)."""
    content_type_options: bool = True
    """``X-Content-Type-Options: nosniff``."""
    referrer_policy: str = "no-referrer"
    """``Referrer-Policy``; empty string disables."""
    permissions_policy: str = "camera=(), microphone=(), geolocation=(), payment=()"
    """``Permissions-Policy``; empty string disables."""
    cross_origin_opener_policy: str = "same-origin"
    """``Cross-Origin-Opener-Policy``; empty string disables."""
    frame_options: str = "DENY"
    """``X-Frame-Options``; empty string disables."""
    remove_response_headers: list[str] = Field(default_factory=lambda: ["server", "x-powered-by"])
    """Headers removed from upstream and app responses."""
    override: bool = False
    """Replace security headers the upstream already set (default: keep the upstream's)."""


CompressionAlgorithm = Literal["zstd", "br", "gzip"]


def _default_algorithms() -> list[CompressionAlgorithm]:
    return ["zstd", "br", "gzip"]


class CompressionConfig(ConfigModel):
    """``[compression]``: response compression negotiated by ``Accept-Encoding`` q-values."""

    enabled: bool = True
    """Compress responses."""
    min_size: ByteSize = 1024
    """Responses smaller than this are sent as they are (``Content-Length``, else the size of a
    single-message body; streamed bodies of unknown length are always compressed)."""
    algorithms: list[CompressionAlgorithm] = Field(
        default_factory=_default_algorithms, min_length=1
    )
    """Encodings offered, in server preference order among those the client accepts with equal q."""
    gzip_level: int = Field(default=6, ge=1, le=9)
    """gzip level, 1 (fast) to 9 (small)."""
    brotli_quality: int = Field(default=4, ge=0, le=11)
    """Brotli quality, 0 (fast) to 11 (small)."""
    zstd_level: int = Field(default=3, ge=1, le=22)
    """zstd level, 1 (fast) to 22 (small)."""
    thread_min_size: ByteSize = 256 * 1024
    """Bodies (or streamed chunks) at least this large are compressed in a worker thread so the
    event loop keeps serving other requests."""
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
    """Media types never compressed (already compressed, or streamed events); ``type/*``
    wildcards. Responses without a ``Content-Type`` are not compressed either."""

    @field_validator("algorithms")
    @classmethod
    def _unique(cls, value: list[CompressionAlgorithm]) -> list[CompressionAlgorithm]:
        if len(set(value)) != len(value):
            raise ValueError("each algorithm may be listed once")
        return value

    @field_validator("excluded_types")
    @classmethod
    def _media_types(cls, value: list[str]) -> list[str]:
        types = [item.strip().lower() for item in value]
        for item in types:
            kind, slash, sub = item.partition("/")
            if not slash or not kind or not sub or kind == "*" or ("*" in sub and sub != "*"):
                raise ValueError(f"invalid media type {item!r}: use 'type/subtype' or 'type/*'")
        return types

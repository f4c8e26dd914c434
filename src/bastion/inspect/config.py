"""``[inspect]``: request inspection (WAF) — mode, paranoia, scoring, limits, exclusions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bastion.config_types import ByteSize, Cidr, ConfigModel, Duration
from bastion.http.paths import glob_regex
from bastion.inspect.core import Category, LocationKind

__all__ = [
    "ExclusionConfig",
    "InspectConfig",
    "InspectMode",
    "InspectRouteConfig",
    "OverLimit",
    "StrikesConfig",
]

InspectMode = Literal["block", "monitor", "off"]
OverLimit = Literal["inspect-prefix", "reject"]

_LOCATION_KINDS: frozenset[str] = frozenset(LocationKind.__args__)  # type: ignore[attr-defined]


def _check_glob(pattern: str) -> str:
    glob_regex(pattern)  # raises ValueError naming the pattern
    return pattern


class ExclusionConfig(ConfigModel):
    """``[[inspect.exclusions]]``: rules or categories not applied to some locations of some
    paths (a field allowed to contain HTML, a parameter exempt from SQL injection checks)."""

    path: str = "/**"
    """Path glob the exclusion applies to (``*`` within a segment, ``**`` across)."""
    location: str = ""
    """``kind`` or ``kind:name`` (``json:bio``, ``query:q``, ``header:referer``); the name may
    use ``*`` as a wildcard and JSON names are dotted key paths (``user.bio``). Empty: every
    location of the path."""
    rules: list[str] = Field(default_factory=list)
    """Rule ids not applied (``xss-script-tag``); a trailing ``*`` matches a prefix."""
    categories: list[Category] = Field(default_factory=list)
    """Categories not applied (``xss``, ``sqli``…)."""

    @field_validator("path")
    @classmethod
    def _path_glob(cls, value: str) -> str:
        return _check_glob(value)

    @field_validator("location")
    @classmethod
    def _location_kind(cls, value: str) -> str:
        kind = value.partition(":")[0]
        if value and kind not in _LOCATION_KINDS:
            known = ", ".join(sorted(_LOCATION_KINDS))
            raise ValueError(f"unknown location kind {kind!r}; one of {known}")
        return value

    @model_validator(mode="after")
    def _says_something(self) -> ExclusionConfig:
        if not self.location and not self.rules and not self.categories:
            raise ValueError(
                "an exclusion needs a location, rules or categories (it would switch "
                "inspection off for the whole path; use [[inspect.routes]] mode = 'off')"
            )
        return self


class InspectRouteConfig(ConfigModel):
    """``[[inspect.routes]]``: a different mode, paranoia or threshold for some paths; the first
    entry whose glob matches the request path applies, unset keys keep the section's value."""

    path: str
    """Path glob (``/api/admin/**``)."""
    mode: InspectMode | None = None
    """``block``, ``monitor`` or ``off`` for these paths."""
    paranoia: int | None = Field(default=None, ge=1, le=4)
    """Paranoia level (1-4) for these paths."""
    threshold: int | None = Field(default=None, ge=1)
    """Anomaly score threshold for these paths."""

    @field_validator("path")
    @classmethod
    def _path_glob(cls, value: str) -> str:
        return _check_glob(value)


class StrikesConfig(ConfigModel):
    """``[inspect.strikes]``: clients whose requests keep being blocked are refused for a while
    (403 ``client_blocked``); blocks are shared by every instance through Redis, or through the
    SQL ban table (source ``inspect``) without it, and listed by ``bastion bans list``."""

    enabled: bool = True
    """Count blocked requests per client and refuse repeat offenders."""
    threshold: int = Field(default=5, ge=1)
    """Blocked requests within ``window`` that make a strike."""
    window: Duration = 600.0
    """Time over which blocked requests are counted."""
    duration: Duration = 900.0
    """How long a struck client is refused."""


class InspectConfig(ConfigModel):
    """``[inspect]``: request inspection. Each location (path, query argument, cookie, selected
    header, form or multipart field, JSON key and leaf, other text body) is decoded and passed to
    the detectors; matching rules add their severity (critical 5, error 4, warning 3, notice 2)
    and a request whose score reaches ``threshold`` is blocked (403 ``request_blocked``)."""

    mode: InspectMode = "block"
    """``block``: refuse requests reaching the threshold; ``monitor``: only log and count them;
    ``off``: inspect nothing."""
    paranoia: int = Field(default=1, ge=1, le=4)
    """1-4: higher levels enable more rules, catching more evasions at the cost of false
    positives (as the OWASP CRS paranoia levels)."""
    threshold: int = Field(default=5, ge=1)
    """Anomaly score at which a request is blocked (5: one critical match)."""
    max_location_bytes: ByteSize = Field(default=8 * 1024, ge=64)
    """Bytes of one location's value that are inspected."""
    max_request_bytes: ByteSize = Field(default=64 * 1024, ge=64)
    """Bytes inspected per request, all locations together; a body larger than this is not
    parsed (JSON, form, multipart) but inspected as text up to the limit."""
    max_locations: int = Field(default=256, ge=1)
    """Locations inspected per request: each costs every detector's call, so a body of
    thousands of tiny fields is cheap in bytes but not in time (ordinary API requests have a
    few dozen)."""
    over_limit: OverLimit = "inspect-prefix"
    """What a request exceeding a limit gets: ``inspect-prefix`` inspects what fits and lets the
    rest through uninspected; ``reject`` refuses it (413 ``payload_too_large``)."""
    headers: list[str] = Field(
        default_factory=lambda: ["User-Agent", "Referer", "X-Forwarded-*"],
    )
    """Request headers whose values are inspected (case-insensitive; a trailing ``*`` matches a
    prefix). Cookies are always inspected, one location per cookie."""
    sensitive_fields: list[str] = Field(default_factory=list)
    """Field names (query, form, multipart, JSON key, cookie; case-insensitive) never inspected
    nor shown in events, e.g. ``card_number``. Fields named like a password are always skipped
    under ``/_bastion/auth/``."""
    exclusions: list[ExclusionConfig] = Field(default_factory=list)
    """Rules or categories not applied to some locations of some paths."""
    routes: list[InspectRouteConfig] = Field(default_factory=list)
    """Per-path mode, paranoia and threshold."""
    allow_cidrs: list[Cidr] = Field(default_factory=list)
    """Client networks whose requests are not inspected (scanners you run yourself)."""
    deny_cidrs: list[Cidr] = Field(default_factory=list)
    """Client networks refused before inspection (403 ``request_blocked``)."""
    strikes: StrikesConfig = Field(default_factory=StrikesConfig)

    @field_validator("headers", "sensitive_fields")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [value.strip().lower() for value in values if value.strip()]

    @model_validator(mode="after")
    def _request_covers_location(self) -> InspectConfig:
        if self.max_request_bytes < self.max_location_bytes:
            raise ValueError("max_request_bytes must be at least max_location_bytes")
        return self

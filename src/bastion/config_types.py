"""Value types shared by every capability's configuration model.

Durations (``"500ms"``, ``"30s"``, ``"15m"``, ``"1h"``, ``"7d"``), byte sizes (``"16KiB"``,
``"10MiB"``), secrets given as ``env:NAME`` or ``file:/path``, CIDR networks and path globs are
parsed here once, at start-up, so stages only ever see ready values.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, SecretStr

__all__ = [
    "ByteSize",
    "Cidr",
    "ConfigModel",
    "Duration",
    "SecretValue",
    "parse_byte_size",
    "parse_duration",
    "resolve_secret",
    "unique_names",
]


class ConfigModel(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_MAX_DURATION = 100 * 365 * 86400.0
"""Longer is a typo: and datetime arithmetic with it would overflow."""


def parse_duration(value: Any) -> float:
    """Seconds for ``"500ms"``, ``"30s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a plain number."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as '30s' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m, h or d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError("a duration is a string such as '30s' or a number of seconds")
    if not math.isfinite(seconds):
        # TOML has nan and inf literals: a sleep of nan never ends, comparisons with it are
        # always false, so such a value would silently switch a feature off.
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > _MAX_DURATION:
        raise ValueError("a duration cannot exceed 100 years")
    return seconds


def _format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str),
]
"""Seconds, written in configuration as ``"500ms"``, ``"30s"``, ``"15m"``, ``"1h"`` or ``"7d"``."""

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "k": 1024,
    "K": 1024,
    "MiB": 1024**2,
    "M": 1024**2,
    "GiB": 1024**3,
    "G": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_byte_size(value: Any) -> int:
    """Return bytes for ``"16KiB"``, ``"10MiB"``, ``"1GB"`` or a plain integer."""
    if isinstance(value, bool):
        raise ValueError("a size is an integer or a string such as '16KiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"invalid size {value!r}: use an integer with B, KiB, MiB or GiB")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError("a size is an integer or a string such as '16KiB'")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""Bytes, written in configuration as an integer or ``"16KiB"``, ``"10MiB"``, ``"1GiB"``."""


def resolve_secret(value: Any) -> Any:
    """Resolve ``env:NAME`` and ``file:/path`` references; other strings are literal secrets."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("a secret is a string, 'env:NAME' or 'file:/path'")
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ValueError("'env:' needs a variable name")
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


SecretValue = Annotated[SecretStr, BeforeValidator(resolve_secret)]
"""A secret: literal, ``env:NAME`` or ``file:/path``; shown redacted by ``bastion config show``."""


def _parse_cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("a network is a string such as '10.0.0.0/8' or '::1'")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"invalid IP network {value!r}") from None


Cidr = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_parse_cidr),
    PlainSerializer(str, return_type=str),
]
"""An IP network (``"10.0.0.0/8"``, ``"::1"``); a bare address is a /32 or /128."""


class _Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=_Named)


def unique_names(items: list[NamedT], what: str) -> list[NamedT]:
    """``items`` unchanged when no two share a ``name``; else ``ValueError("two <what> are
    named …")`` for the first repeated one (a field validator's whole body)."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"two {what} are named {item.name!r}")
        seen.add(item.name)
    return items

"""Split a request into the locations the detectors inspect, each parsed once and bounded.

Order: the path, query argument names and values, cookie names and values, the configured
headers, then the body by media type (form fields, multipart field values and file names, JSON
keys and string leaves, else the text itself). Every value is cut to ``max_location_bytes`` and
all of them together to ``max_request_bytes`` and ``max_locations``; a :class:`Budget` records
whether anything was cut, so the caller can apply the ``over_limit`` policy. Nothing here raises:
a body that does not parse as its media type says is inspected as text instead.

Values are yielded undecoded (``Normalized`` decodes lazily, and multi-layer encoding is itself
an evasion detectors look for). The path is one location rather than one per segment, because a
traversal (``/a/../../etc/passwd``) or an encoded separator only shows across segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from bastion.inspect.config import InspectConfig
from bastion.inspect.core import Location, LocationKind, Normalized
from bastion.inspect.request import FORM_URLENCODED, InspectionRequest, media_type

__all__ = ["AUTH_PATH_PREFIX", "MAX_JSON_DEPTH", "Budget", "location_of", "locations", "raw_values"]

AUTH_PATH_PREFIX = "/_bastion/auth/"
MAX_JSON_DEPTH = 32
"""A JSON body nested deeper than this is inspected as text rather than by key and leaf."""
_MAX_NAME = 256
_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
_BINARY_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/zip",
        "application/gzip",
        "application/pdf",
        "application/x-protobuf",
        "application/protobuf",
        "application/grpc",
    }
)


_LOCATIONS: dict[tuple[LocationKind, str], Location] = {}
"""Locations already built: requests repeat the same few dozen kinds and names, and a frozen
dataclass costs several times a dictionary look-up to build. Bounded: cleared when full."""
_MAX_CACHED_LOCATIONS = 4096
_MAX_LOWER_NAMES = 1024


def location_of(kind: LocationKind, name: str) -> Location:
    """The :class:`Location` ``kind:name``, shared between requests."""
    key = (kind, name)
    location = _LOCATIONS.get(key)
    if location is None:
        if len(_LOCATIONS) >= _MAX_CACHED_LOCATIONS:
            _LOCATIONS.clear()
        location = _LOCATIONS[key] = Location(kind, name)
    return location


class _Rules:
    """What ``locations`` derives from a configuration, once per configuration object rather
    than once per request (configurations are immutable)."""

    __slots__ = ("config", "exact", "names", "prefixes", "sensitive")

    def __init__(self, config: InspectConfig) -> None:
        self.config = config  # kept so that its id is not reused while cached
        self.exact = frozenset(name for name in config.headers if not name.endswith("*"))
        self.prefixes = tuple(name[:-1] for name in config.headers if name.endswith("*"))
        self.sensitive = frozenset(config.sensitive_fields)
        self.names: dict[str, tuple[str, bool]] = {}
        """Header names as sent → lower-cased, and whether the field is inspected: the same
        few dozen names come with every request. Bounded: cleared when full."""

    def header(self, name: str) -> tuple[str, bool]:
        """``name`` lower-cased, and whether a field of that name is inspected."""
        known = self.names.get(name)
        if known is None:
            lowered = name.lower()
            selected = lowered in self.exact or lowered.startswith(self.prefixes)
            if len(self.names) >= _MAX_LOWER_NAMES:
                self.names.clear()
            known = self.names[name] = (lowered, selected)
        return known


_RULES: dict[int, _Rules] = {}
_MAX_CACHED_RULES = 64


def _rules(config: InspectConfig) -> _Rules:
    rules = _RULES.get(id(config))
    if rules is None or rules.config is not config:
        if len(_RULES) >= _MAX_CACHED_RULES:
            _RULES.clear()
        rules = _RULES[id(config)] = _Rules(config)
    return rules


@dataclass(slots=True)
class Budget:
    """What one request may still have inspected, and whether anything was left out."""

    bytes_left: int
    locations_left: int
    truncated: bool = False

    @classmethod
    def for_config(cls, config: InspectConfig) -> Budget:
        """A fresh budget with the configured per-request limits."""
        return cls(config.max_request_bytes, config.max_locations)


def label(name: str) -> str:
    """A field name as shown in locations and events: percent-decoded, ``+`` as space, short."""
    text = unquote(name.replace("+", " "), errors="replace") if "%" in name or "+" in name else name
    return text[:_MAX_NAME]


def text_of(data: bytes) -> str:
    """Bytes as text: UTF-8 when valid, else latin-1 so that every byte is kept."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _Emitter:
    """Collects ``(kind, name, value)`` triples cut to the limits, skipping sensitive fields;
    ``done`` once the budget is spent."""

    __slots__ = ("budget", "out", "passwords", "per_location", "sensitive")

    def __init__(
        self, config: InspectConfig, budget: Budget, passwords: bool, sensitive: frozenset[str]
    ) -> None:
        self.budget = budget
        self.per_location = config.max_location_bytes
        self.sensitive = sensitive
        self.passwords = passwords
        self.out: list[tuple[LocationKind, str, str]] = []

    @property
    def done(self) -> bool:
        return self.budget.bytes_left <= 0 or self.budget.locations_left <= 0

    def is_sensitive(self, name: str) -> bool:
        if not self.sensitive and not self.passwords:
            return False  # the default: nothing to look up
        leaf = name.rpartition(".")[2].lower()
        return leaf in self.sensitive or (self.passwords and "password" in leaf)

    def take(self, kind: LocationKind, name: str, value: str) -> None:
        if not value:
            return
        budget = self.budget
        if budget.bytes_left <= 0 or budget.locations_left <= 0:
            budget.truncated = True
            return
        limit = self.per_location
        if budget.bytes_left < limit:
            limit = budget.bytes_left
        if len(value) > limit:
            value = value[:limit]
            budget.truncated = True
        budget.bytes_left -= len(value)
        budget.locations_left -= 1
        self.out.append((kind, name, value))


def locations(
    request: InspectionRequest,
    config: InspectConfig,
    budget: Budget | None = None,
    *,
    auth_prefix: str = AUTH_PATH_PREFIX,
) -> Iterator[tuple[Location, Normalized]]:
    """Every inspected location of ``request`` with its value, within ``config``'s limits.

    Field names in ``config.sensitive_fields`` are skipped everywhere, and any field whose name
    contains ``password`` under ``auth_prefix`` (Bastion's own login and account endpoints).
    """
    for kind, name, value in raw_values(request, config, budget, auth_prefix=auth_prefix):
        yield location_of(kind, name), Normalized(value)


def raw_values(
    request: InspectionRequest,
    config: InspectConfig,
    budget: Budget | None = None,
    *,
    auth_prefix: str = AUTH_PATH_PREFIX,
) -> list[tuple[LocationKind, str, str]]:
    """What :func:`locations` yields, as ``(kind, name, raw value)`` and before any object is
    built: the engine looks each value up in its memo first, and most are found there."""
    rules = _rules(config)
    path, query = request.split_target()
    emit = _Emitter(
        config, budget or Budget.for_config(config), path.startswith(auth_prefix), rules.sensitive
    )
    emit.take("path", "", path)
    if query:
        _pairs(query, "&", "query_name", "query", emit)
    # One pass over the fields: cookies are inspected before the selected headers.
    cookies: list[str] = []
    selected: list[tuple[str, str]] = []
    content_type: str | None = None  # the first field's, as ``request.content_type`` reads it
    names = rules.names
    for name, value in request.headers:
        lowered, inspected = names.get(name) or rules.header(name)
        if lowered == "cookie":
            cookies.append(value)
        elif lowered == "content-type" and content_type is None:
            content_type = value
        if inspected:
            selected.append((lowered, value))
    for cookie_header in cookies:
        _pairs(cookie_header, ";", "cookie_name", "cookie", emit)
    for lowered, value in selected:
        emit.take("header", lowered, value)
    body = request.body
    if body:
        if emit.done:
            emit.budget.truncated = True
        else:
            _body(content_type or "", body, emit)
    return emit.out


def _pairs(
    text: str, separator: str, name_kind: LocationKind, value_kind: LocationKind, emit: _Emitter
) -> None:
    budget = emit.budget
    take = emit.take
    screened = bool(emit.sensitive) or emit.passwords
    cookies = separator == ";"
    for field in text.split(separator):
        if budget.bytes_left <= 0 or budget.locations_left <= 0:
            budget.truncated = True
            return
        name, _, value = (field.strip() if cookies else field).partition("=")
        # Most names need no decoding nor cut: they are shown as they are.
        shown = label(name) if "%" in name or "+" in name or len(name) > _MAX_NAME else name
        take(name_kind, "", name)
        if not screened or not emit.is_sensitive(shown):
            take(value_kind, shown, value)


def _body(content_type: str, body: bytes, emit: _Emitter) -> None:
    media = media_type(content_type)
    if media.startswith(_BINARY_PREFIXES) or media in _BINARY_TYPES:
        return
    if len(body) > emit.budget.bytes_left:
        # Too large to parse within the budget: its prefix is inspected as plain text.
        emit.take("body", "", text_of(body[: emit.budget.bytes_left]))
        emit.budget.truncated = True
        return
    text = text_of(body)
    if media == FORM_URLENCODED:
        _pairs(text, "&", "form_name", "form", emit)
        return
    if media == "multipart/form-data":
        boundary = _parameter(content_type, "boundary")
        if boundary:
            _multipart(text, boundary, emit)
            return
    elif media == "application/json" or media.endswith("+json"):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            _json(document, text, emit)
            return
    emit.take("body", "", text)


def _parameter(header_value: str, wanted: str) -> str:
    """A parameter of a header value such as ``Content-Type`` or ``Content-Disposition``."""
    for piece in header_value.split(";")[1:]:
        key, _, value = piece.partition("=")
        if key.strip().lower() == wanted:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return ""


def _multipart(text: str, boundary: str, emit: _Emitter) -> None:
    """Field names, field values and file names of a ``multipart/form-data`` body. File contents
    are data rather than parameters and are not inspected."""
    parts = text.split("--" + boundary)
    for part in parts[1:]:
        if emit.done:
            emit.budget.truncated = True
            return
        if part.startswith("--"):
            return  # the closing delimiter
        head, sep, content = part.lstrip("\r\n").partition("\r\n\r\n")
        if not sep:
            head, sep, content = part.lstrip("\r\n").partition("\n\n")
        disposition = ""
        for line in head.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = _parameter(disposition, "name")
        filename = _parameter(disposition, "filename")
        shown = name[:_MAX_NAME]
        emit.take("multipart_name", "", name)
        if filename:
            emit.take("filename", shown, filename)
        elif not emit.is_sensitive(shown):
            emit.take("multipart", shown, content.removesuffix("\r\n").removesuffix("\n"))


def _json(document: Any, text: str, emit: _Emitter) -> None:
    """Object keys and string leaves, depth-first with an explicit stack (no recursion limit to
    reach). A document deeper than :data:`MAX_JSON_DEPTH` is inspected as its text instead of
    going on: whatever lies deeper is then still seen by every detector."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        if emit.done:
            emit.budget.truncated = True
            return
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not emit.is_sensitive(path):
                emit.take("json", path, value)
        elif depth >= MAX_JSON_DEPTH and isinstance(value, dict | list):
            emit.take("body", "", text)
            return
        elif isinstance(value, dict):
            children: list[tuple[Any, str, int]] = []
            for key, child in value.items():
                emit.take("json_key", path, key)
                child_path = f"{path}.{key}"[:_MAX_NAME] if path else key[:_MAX_NAME]
                children.append((child, child_path, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((child, path, depth + 1) for child in reversed(value))

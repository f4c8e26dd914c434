"""HTTP protocol anomalies over the whole request (not a per-location detector).

These are the shapes request smuggling and parser-confusion attacks need and well-behaved
clients never produce: a ``Content-Length`` that is not a number or disagrees with itself,
``Transfer-Encoding`` that a front end and a back end may read differently (``chunked`` not
last, ``xchunked``, ``chunked`` next to ``Content-Length``), NUL bytes, a method or header name
outside the token grammar, a body on ``GET``/``HEAD``, and a ``Content-Type`` that names two
media types. Every check is one pass over the request's fields, with ``str`` and ``bytes``
methods rather than regular expressions where a character class is all there is to test (an RE2
call through its Python wrapper costs more than the whole check of a typical header).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import re2

from bastion.inspect.core import Location, Match, Severity

if TYPE_CHECKING:
    from bastion.inspect.request import InspectionRequest

__all__ = ["check_protocol"]

# RFC 9110 token: the grammar of methods and header field names (``^[tchar]+$``).
_TCHAR = b"!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
_MAX_DIGITS = 19
_KNOWN_CODINGS = frozenset({"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress", "br"})
_STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
_HEADER_NAMES: dict[str, tuple[str, bool]] = {}
"""Header names seen, each with its lower-case form and whether it is a token: clients send the
same few dozen names, so each is examined once. Bounded: cleared when full."""
_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding", "content-type"})
_CONTENT_TYPES: dict[str, tuple[str, tuple[tuple[str, int, int], ...]]] = {}
"""Content-Type values seen, with their media type and findings (bounded: cleared when full)."""
# Locations of request-wide findings, built once (a frozen dataclass costs a call to build).
_METHOD = Location("method")
_PATH = Location("path")
_BODY = Location("body")
_CONTENT_LENGTH = Location("header", "content-length")
_TRANSFER_ENCODING = Location("header", "transfer-encoding")
_CONTENT_TYPE = Location("header", "content-type")
_MAX_HEADER_NAMES = 1024
# A second media type hidden in a parameter (boundary="application/json") confuses parsers
# that look for the type anywhere in the header.
_SMUGGLED_TYPE = re2.compile(
    r"(?i)[;,].*\b(?:application|text|multipart|image|audio|video|message|model|font)/[\w.+-]+"
)
_RAW_HEADER_LIMIT = 64 * 1024


def check_protocol(request: InspectionRequest, paranoia: int) -> list[Match]:
    """Protocol-anomaly matches of ``request`` for rules enabled at ``paranoia`` (1-4)."""
    if _unremarkable(request):
        return []
    found: dict[tuple[str, Location], Match] = {}

    def add(name: str, location: Location, level: int, severity: int = Severity.CRITICAL) -> None:
        if level > paranoia:
            return
        rule = f"protocol-{name}"
        key = (rule, location)
        if key not in found or found[key].paranoia > level:
            found[key] = Match(rule, "protocol", severity, location, level)

    if request.method not in _STANDARD_METHODS:
        _check_method(request, add)
    _check_target(request, add)
    lengths, codings, content_types = _check_headers(request, add)
    body = request.body
    # Most requests have neither framing header nor body, nor a Content-Type to check.
    if lengths or codings or body:
        _check_framing(request, lengths, codings, add)
    if content_types:
        _check_content_type(request, content_types, add)
    if request.raw is not None:
        _check_raw_head(request.raw, add)
    if paranoia >= 3 and b"\x00" in body:
        add("null-byte", _BODY, 3, Severity.WARNING)
    return list(found.values())


def _unremarkable(request: InspectionRequest) -> bool:
    """Whether no check can find anything, decided in one pass: a standard method, a target
    without "%" or control characters, no body nor wire form, and fields with valid names other
    than the framing ones and printable values without "%00" (most bodyless requests)."""
    target = request.target
    if (
        request.method not in _STANDARD_METHODS
        or request.body
        or request.raw is not None
        or "%" in target
        or not target.isprintable()
    ):
        return False
    names = _HEADER_NAMES
    for name, value in request.headers:
        lowered, valid = names.get(name) or _header_name(name)
        if not valid or lowered in _FRAMING_NAMES or not value.isprintable() or "%00" in value:
            return False
    return True


def _is_token(text: str) -> bool:
    """``text`` matches the RFC 9110 token grammar (``^[tchar]+$``)."""
    return bool(text) and text.isascii() and not text.encode().translate(None, _TCHAR)


def _header_name(name: str) -> tuple[str, bool]:
    """``name`` lower-cased, and whether it is a token (memoised)."""
    known = _HEADER_NAMES.get(name)
    if known is None:
        if len(_HEADER_NAMES) >= _MAX_HEADER_NAMES:
            _HEADER_NAMES.clear()
        known = _HEADER_NAMES[name] = (name.lower(), _is_token(name))
    return known


def _is_media_type(text: str) -> bool:
    """``text`` (already lower-cased, so no ASCII capital is left) is ``type/subtype`` of two
    tokens."""
    kind, slash, subtype = text.partition("/")
    return bool(slash) and _is_token(kind) and _is_token(subtype)


def _is_length(text: str) -> bool:
    """``text`` is 1 to 19 ASCII digits (``^[0-9]{1,19}$``)."""
    return 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()


class _Add(Protocol):
    """Signature of the ``add`` callback the checks share (documentation for mypy)."""

    def __call__(
        self, name: str, location: Location, level: int, severity: int = Severity.CRITICAL
    ) -> None: ...


def _check_method(request: InspectionRequest, add: _Add) -> None:
    method = request.method
    if method in _STANDARD_METHODS:
        return
    location = _METHOD
    if not _is_token(method):
        add("method-invalid", location, 1)
    elif method.upper() not in _STANDARD_METHODS:
        add("method-unknown", location, 3 if len(method) <= 16 else 2, Severity.WARNING)


def _check_target(request: InspectionRequest, add: _Add) -> None:
    target = request.target
    # Lower-casing is only needed to find escapes; most targets have no "%" or control byte.
    lowered = target.lower() if "%" in target else ""
    if "\x00" in target or "%00" in lowered or "%u0000" in lowered:
        add("null-byte", _PATH, 1)
    if "\r" in target or "\n" in target or "%0a" in lowered or "%0d" in lowered:
        # A line break in the target splits the request line for a downstream parser.
        add("target-line-break", _PATH, 2, Severity.ERROR)


def _check_headers(
    request: InspectionRequest, add: _Add
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Per-field checks; returns the Content-Length, Transfer-Encoding and Content-Type fields."""
    lengths: list[tuple[str, str]] = []
    codings: list[tuple[str, str]] = []
    content_types: list[tuple[str, str]] = []
    names = _HEADER_NAMES
    for name, value in request.headers:
        lowered, valid = names.get(name) or _header_name(name)
        if not valid:
            add("header-name-invalid", Location("header", lowered), 1)
        # One C-level scan clears the common field: NUL, CR and LF are all unprintable. The
        # location is built only for a finding.
        if not value.isprintable() or "\x00" in name:
            if "\x00" in value or "\x00" in name:
                add("null-byte", Location("header", lowered), 1)
            if "\r" in value or "\n" in value:
                add("header-line-break", Location("header", lowered), 1)
        if "%00" in value and "\x00" not in value and "\x00" not in name:
            add("null-byte", Location("header", lowered), 2, Severity.ERROR)
        if lowered in _FRAMING_NAMES:
            if lowered == "content-length":
                lengths.append((name, value))
            elif lowered == "transfer-encoding":
                codings.append((name, value))
            else:
                content_types.append((name, value))
    return lengths, codings, content_types


def _check_framing(
    request: InspectionRequest,
    lengths: list[tuple[str, str]],
    codings: list[tuple[str, str]],
    add: _Add,
) -> None:
    """Content-Length and Transfer-Encoding: the two ways to frame a body, and their clashes."""
    declared: set[str] = set()
    for name, value in lengths:
        parts = [part.strip() for part in value.split(",")]
        if not all(_is_length(part) for part in parts):
            add("content-length-invalid", Location("header", name.lower()), 1)
        declared.update(parts)
    if len(declared) > 1:
        add("content-length-conflict", _CONTENT_LENGTH, 1)
    elif len(lengths) > 1 or any("," in value for _, value in lengths):
        add("content-length-duplicate", _CONTENT_LENGTH, 2, Severity.ERROR)

    location = _TRANSFER_ENCODING
    tokens = [token.strip().lower() for _, value in codings for token in value.split(",")]
    if codings:
        if lengths:
            add("te-and-content-length", location, 1)
        if tokens.count("chunked") > 1:
            add("te-chunked-repeated", location, 1)
        if "chunked" in tokens and tokens[-1] != "chunked":
            add("te-chunked-not-last", location, 1)
        for token in tokens:
            if token in _KNOWN_CODINGS:
                continue
            if "chunked" in token or token in ("identity", ""):
                # xchunked, "chunked;x", identity: spellings one parser accepts and another not.
                add("te-obfuscated", location, 1)
            else:
                add("te-unknown", location, 2, Severity.ERROR)
        for _, value in codings:
            if value != value.strip() or "\t" in value or "\x0b" in value or "\x0c" in value:
                add("te-obfuscated", location, 1)

    if request.method.upper() in _NO_BODY_METHODS:
        has_length = any(part not in ("0", "") for part in declared)
        if codings or has_length or request.body.strip():
            add("body-on-get", _METHOD, 1)


def _check_content_type(
    request: InspectionRequest, content_types: list[tuple[str, str]], add: _Add
) -> None:
    location = _CONTENT_TYPE
    if len(content_types) > 1 and len({value.strip().lower() for _, value in content_types}) > 1:
        add("content-type-conflict", location, 1)
    for _, value in content_types:
        for name, level, severity in _content_type(value)[1]:
            add(name, location, level, severity)
    # Only the first bytes past leading whitespace matter: a long body is not copied to find them.
    body = request.body[:64].lstrip()
    if len(body) < 4 and len(request.body) > 64:
        body = request.body.lstrip()[:4]
    if not body or not content_types:
        return
    # What ``request.content_type`` reads: the first Content-Type field.
    media_type = _content_type(content_types[0][1])[0]
    first = body[:1]
    if (
        media_type.endswith(("/json", "+json"))
        and first not in (b"{", b"[", b'"')
        and not (first.isdigit() or body[:4] in (b"true", b"fals", b"null") or first == b"-")
    ):
        add("content-type-mismatch", location, 2, Severity.ERROR)
    elif media_type == "application/x-www-form-urlencoded" and first in (b"{", b"[", b"<"):
        add("content-type-mismatch", location, 3, Severity.WARNING)


def _content_type(value: str) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The lower-cased media type of a Content-Type value and its findings as ``(name, level,
    severity)``, each distinct value examined once (clients send the same few)."""
    known = _CONTENT_TYPES.get(value)
    if known is not None:
        return known
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip().lower()
    findings: tuple[tuple[str, int, int], ...] = ()
    # The smuggled type follows the first ";" (a "," in the type is caught before), so a
    # parameter list without "/" cannot hold one.
    if "," in media_type or (parameters and "/" in parameters and _SMUGGLED_TYPE.search(value)):
        if not ("boundary" in parameters.lower() and media_type.startswith("multipart/")):
            findings = (("content-type-confusion", 1, Severity.CRITICAL),)
    elif media_type and not _is_media_type(media_type):
        findings = (("content-type-invalid", 2, Severity.ERROR),)
    if len(_CONTENT_TYPES) >= _MAX_HEADER_NAMES:
        _CONTENT_TYPES.clear()
    known = _CONTENT_TYPES[value] = (media_type, findings)
    return known


def _check_raw_head(raw: bytes, add: _Add) -> None:
    """Header spellings only the wire shows: ``Transfer-Encoding : x``, folding, bare CR."""
    head = raw[:_RAW_HEADER_LIMIT].split(b"\r\n\r\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")[1:]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # obs-fold: deprecated, and parsers disagree on where the field ends.
            add("header-folding", Location("header"), 1)
            continue
        name, colon, _ = line.partition(b":")
        if not colon:
            if line.strip():
                add("header-malformed", Location("header"), 1)
            continue
        text = name.decode("latin-1")
        if text != text.strip() and text.strip():
            add("header-name-invalid", Location("header", text.strip().lower()), 1)
        if b"\r" in line:
            add("header-line-break", Location("header", text.strip().lower()), 1)

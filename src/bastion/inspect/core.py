"""What every detector sees and returns.

A request is split into :class:`Location` s (a query argument, a cookie, a JSON leaf, a header,
a path segment…). Each location's value is wrapped once in a :class:`Normalized`, whose decoded
forms are computed lazily and at most once, so each detector asks only for the forms it needs
and no form is computed twice. Detectors are plain callables ``(value, location, paranoia) ->
list[Match]``, each testable alone; the engine adds up their severities into an anomaly score.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, overload
from urllib.parse import unquote_to_bytes

import re2

__all__ = [
    "CATEGORIES",
    "Category",
    "Detector",
    "Finder",
    "Location",
    "LocationKind",
    "Match",
    "Normalized",
    "Severity",
]

Category = Literal["sqli", "xss", "rce", "lfi", "rfi", "ssrf", "php", "java", "protocol", "scanner"]
CATEGORIES: tuple[Category, ...] = (
    "sqli",
    "xss",
    "rce",
    "lfi",
    "rfi",
    "ssrf",
    "php",
    "java",
    "protocol",
    "scanner",
)

LocationKind = Literal[
    "path",
    "query_name",
    "query",
    "cookie_name",
    "cookie",
    "header",
    "form_name",
    "form",
    "multipart_name",
    "multipart",
    "filename",
    "json_key",
    "json",
    "body",
    "method",
]


class Severity:
    """Anomaly points per match, as in the OWASP CRS: a request is blocked when the sum of its
    matches reaches the threshold (default 5, so one critical match blocks)."""

    CRITICAL = 5
    ERROR = 4
    WARNING = 3
    NOTICE = 2


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value was found: ``kind`` and ``name`` (argument, header or field name)."""

    kind: LocationKind
    name: str = ""

    def label(self) -> str:
        """``query:id``, ``header:user-agent``, ``path`` — for audit events and reports."""
        return f"{self.kind}:{self.name}" if self.name else self.kind


class Match(NamedTuple):
    """One detector finding. A named tuple: immutable, and built several times faster than a
    frozen dataclass (attack values produce a handful each)."""

    rule: str
    """Stable rule id, ``<category>-<name>`` (``sqli-union-select``, ``xss-event-handler``)."""
    category: Category
    severity: int
    location: Location
    paranoia: int = 1
    """Lowest paranoia level at which the rule is enabled."""


class Detector(Protocol):
    """A detector: the matches of one value at one location, for rules enabled at
    ``paranoia`` (1-4). Must never raise, and must run in time linear in the value's size."""

    def __call__(self, value: Normalized, location: Location, paranoia: int) -> list[Match]: ...


# Attacker input is matched with RE2 (linear time) wherever a pattern could backtrack. The
# escape patterns below are fixed-length alternatives with bounded counts, which Python's engine
# also matches in linear time, and its substitution callbacks cost a fraction of the RE2
# wrapper's (measured: 16,000 ``\x41`` escapes took 287 ms through RE2, 12 ms here).
_PERCENT_U = re.compile(r"%[uU]([0-9A-Fa-f]{4})")
_BACKSLASH_ESCAPE = re.compile(
    r"\\(?:x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|u\{([0-9A-Fa-f]{1,6})\}|([0-7]{1,3}))"
)
_SQL_COMMENT = re2.compile(r"(?s)/\*.*?\*/|--[^\n]*|#[^\n]*")
# Characters str.split() does not treat as whitespace but an evasion may use as a separator.
_INVISIBLE_SPACES = str.maketrans({"\u200b": " ", "\ufeff": " ", "\u180e": " "})
_SURROGATE_LOW, _SURROGATE_HIGH = 0xD800, 0xDFFF
_MAX_DECODE_ROUNDS = 3


def _char(code: int) -> str:
    """The character ``code``, with a lone surrogate (``%uD800``) as U+FFFD: such text cannot be
    encoded, so no later form (nor RE2) could handle it."""
    return "\ufffd" if _SURROGATE_LOW <= code <= _SURROGATE_HIGH else chr(code)


def _percent_decode(text: str) -> str:
    """One round of URL decoding: ``%XX`` as UTF-8 (invalid sequences kept as latin-1 so no
    byte is lost, and overlong encodings decoded leniently the way vulnerable servers do),
    ``%uXXXX``, and ``+`` as space."""
    if "%" not in text and "+" not in text:
        return text
    if "%u" in text or "%U" in text:
        text = _PERCENT_U.sub(lambda m: _char(int(m.group(1), 16)), text)
    raw = unquote_to_bytes(text.replace("+", " "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _lenient_utf8(raw)


def _lenient_utf8(raw: bytes) -> str:
    """Decode UTF-8 accepting overlong forms (``%c0%af`` → ``/``), else latin-1 per byte."""
    out: list[str] = []
    index = 0
    size = len(raw)
    while index < size:
        byte = raw[index]
        if byte >= 0xC0 and index + 1 < size and 0x80 <= raw[index + 1] < 0xC0:
            if byte < 0xE0:
                out.append(chr(((byte & 0x1F) << 6) | (raw[index + 1] & 0x3F)))
                index += 2
                continue
            if byte < 0xF0 and index + 2 < size and 0x80 <= raw[index + 2] < 0xC0:
                code = (
                    ((byte & 0x0F) << 12) | ((raw[index + 1] & 0x3F) << 6) | (raw[index + 2] & 0x3F)
                )
                out.append(chr(code))
                index += 3
                continue
        out.append(chr(byte))
        index += 1
    return "".join(out)


def _unescape_backslashes(text: str) -> str:
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        hex2, hex4, braced, octal = match.groups()
        digits = hex2 or hex4 or braced
        code = int(digits, 16) if digits else int(octal, 8)
        return _char(code) if code <= 0x10FFFF else str(match.group(0))

    return _BACKSLASH_ESCAPE.sub(replace, text)


def _spaced(text: str) -> str:
    """``text`` with zero-width separators as spaces (``str.split`` covers the rest)."""
    return text if text.isascii() else text.translate(_INVISIBLE_SPACES)


class Finder:
    """An RE2 pattern used only to ask whether it occurs in a text. The text goes to RE2 as
    UTF-8 bytes, the form RE2 matches anyway: the Python wrapper then skips mapping byte offsets
    back to character offsets, which costs about as much as the search itself."""

    __slots__ = ("_regexp", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regexp = re2.compile(pattern.encode())

    def found(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text``."""
        return self._regexp.search(text.encode()) is not None


class _Form:
    """A decoded form of a :class:`Normalized`, computed on first use and then kept in the
    instance's ``__dict__``, where later reads find it without calling this descriptor again.
    What ``functools.cached_property`` does, without the lock it takes on Python 3.11 (several
    forms are computed per inspected value)."""

    __slots__ = ("compute", "name")

    def __init__(self, compute: Callable[[Normalized], str]) -> None:
        self.compute = compute
        self.name = compute.__name__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _Form: ...

    @overload
    def __get__(self, instance: Normalized, owner: type | None = None) -> str: ...

    def __get__(self, instance: Normalized | None, owner: type | None = None) -> _Form | str:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


class Normalized:
    """One value and its decoded forms, each computed on first use.

    - ``raw``: as received (already bounded by the engine's per-location byte limit).
    - ``decoded``: URL-decoded repeatedly until stable (at most 3 rounds), ``%uXXXX`` included.
    - ``unescaped``: ``decoded`` with HTML entities and backslash escapes (``\\x41``, ``\\u0041``,
      octal) resolved.
    - ``nfkc``: ``unescaped`` in Unicode NFKC (full-width letters become ASCII ones).
    - ``folded``: ``nfkc`` case-folded.
    - ``sql``: ``folded`` with SQL comments removed and whitespace runs collapsed to one space.
    - ``compact``: ``folded`` without any whitespace (for split-keyword evasions).
    - ``path``: ``nfkc`` with ``\\`` as ``/``, repeated slashes merged and ``./`` removed (``../``
      kept: escaping the root is what a traversal detector looks for).
    """

    __slots__ = ("__dict__", "raw")

    def __init__(self, raw: str) -> None:
        # Lone surrogates (from a lenient upstream decoder) cannot be encoded for RE2.
        self.raw = raw.encode("utf-8", "replace").decode("utf-8") if not raw.isascii() else raw

    @_Form
    def decoded(self) -> str:
        text = self.raw
        for _ in range(_MAX_DECODE_ROUNDS):
            decoded = _percent_decode(text)
            if decoded == text:
                break
            text = decoded
        return text

    @_Form
    def unescaped(self) -> str:
        text = self.decoded
        if "&" in text:
            text = html.unescape(text)
        return _unescape_backslashes(text)

    @_Form
    def nfkc(self) -> str:
        raw = self.raw
        if (
            raw.isascii()
            and "%" not in raw
            and "+" not in raw
            and "&" not in raw
            and "\\" not in raw
        ):
            # Nothing to decode, unescape or normalise: every form up to this one is raw.
            forms = self.__dict__
            forms.setdefault("decoded", raw)
            forms.setdefault("unescaped", raw)
            return raw
        text = self.unescaped
        return text if text.isascii() else unicodedata.normalize("NFKC", text)

    @_Form
    def folded(self) -> str:
        return self.nfkc.casefold()

    @_Form
    def sql(self) -> str:
        text = self.folded
        if "/*" in text or "--" in text or "#" in text:
            text = str(_SQL_COMMENT.sub(" ", text))
        return " ".join(_spaced(text).split())

    @_Form
    def compact(self) -> str:
        return "".join(_spaced(self.folded).split())

    @_Form
    def path(self) -> str:
        text = self.nfkc.replace("\\", "/")
        while "//" in text:
            # Each pass halves every run of slashes: a few C-level passes, no regex call.
            text = text.replace("//", "/")
        while "/./" in text:
            text = text.replace("/./", "/")
        return text.removeprefix("./")

    def __repr__(self) -> str:
        return f"Normalized({self.raw[:40]!r})"

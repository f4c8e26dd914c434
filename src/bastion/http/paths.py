"""Path globs: ``*`` matches within one segment, ``**`` across segments.

Globs are compiled for RE2 (``google-re2``), which matches in time linear in the path: with a
backtracking engine, a rule such as ``/**/a/**/b`` took seconds of event-loop time on one long
crafted path (measured), and paths are chosen by clients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import unquote

import re2

from bastion.http.asgi import Scope

__all__ = [
    "GlobMatcher",
    "PathGlob",
    "check_globs",
    "compile_alternatives",
    "compile_glob",
    "glob_regex",
    "path_spellings",
]

_SLASHES = re.compile(r"/{2,}")
_ENCODED_SEPARATOR = re.compile(rb"%(?:2[fF]|5[cC])")


class GlobMatcher(Protocol):
    """A compiled glob (or alternation of globs): ``match`` anchors at both ends."""

    def match(self, text: str) -> Any: ...


def compile_glob(pattern: str) -> GlobMatcher:
    """Compile a path glob; ``.match(path)`` is a match of the whole path.

    ``/api/**`` matches ``/api`` and everything below it; ``/users/*/orders`` matches one
    segment in place of ``*``.
    """
    return _compile(glob_regex(pattern))


def check_globs(patterns: list[str]) -> list[str]:
    """``patterns``, once each compiles (configuration validators; ``ValueError`` names the
    first pattern that does not)."""
    for pattern in patterns:
        compile_glob(pattern)
    return patterns


def compile_alternatives(sources: Iterable[str]) -> GlobMatcher:
    """One matcher for several :func:`glob_regex` sources, each a capturing group in order:
    the first alternative that matches the whole path is ``lastindex``."""
    return _compile("|".join(f"({source})" for source in sources))


def _compile(source: str) -> GlobMatcher:
    # (?s): a path may contain any character, newlines included; $ is the end of the text.
    matcher: GlobMatcher = re2.compile(f"(?s)(?:{source})$")
    return matcher


def glob_regex(pattern: str) -> str:
    """The regular-expression source of a path glob (no anchors, non-capturing groups only).

    Raises :class:`ValueError` for a pattern that does not start with ``/``.
    """
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern {pattern!r} must start with '/'")
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("/**", index) and index + 3 == len(pattern):
            parts.append("(?:/.*)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return "".join(parts)


def path_spellings(scope: Scope, path: str) -> list[str]:
    """Other spellings of ``path`` that an upstream may route differently from Bastion's decoded
    path; empty for the common plain path.

    ``path`` is the request's decoded path with repeated slashes already merged. The spellings
    are: an encoded ``/`` or ``\\`` (``%2F``, ``%5C`` in ``raw_path``) kept inside its segment,
    backslashes as slashes, a trailing slash dropped, lower case (case-insensitive routers), and
    all of these at once. A rule or policy that must hold whatever the spelling is checked
    against ``path`` and every spelling, and the strictest answer applies.
    """
    variants: list[str] = []
    raw: bytes | None = scope.get("raw_path")
    if raw is not None and _ENCODED_SEPARATOR.search(raw):
        kept = _ENCODED_SEPARATOR.sub(lambda match: b"%25" + match.group(0)[1:], raw)
        segment_path = unquote(kept.split(b"?", 1)[0].decode("latin-1"))
        variants.append(_SLASHES.sub("/", segment_path))
    if "\\" in path:
        variants.append(_SLASHES.sub("/", path.replace("\\", "/")))
    if len(path) > 1 and path.endswith("/"):
        variants.append(path.rstrip("/") or "/")
    lowered = path.lower()
    if lowered != path:
        variants.append(lowered)
    if variants:
        # All of the above at once: an upstream may apply several of these foldings.
        canonical = _SLASHES.sub("/", lowered.replace("\\", "/")).rstrip("/") or "/"
        if canonical != path and canonical not in variants:
            variants.append(canonical)
    return variants


class PathGlob:
    """A set of path globs tested together; the empty set matches nothing."""

    __slots__ = ("_pattern", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        sources = [glob_regex(p) for p in self.patterns]
        self._pattern = _compile("|".join(f"(?:{p})" for p in sources)) if sources else None

    def matches(self, path: str) -> bool:
        return self._pattern is not None and self._pattern.match(path) is not None

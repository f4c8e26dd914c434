"""Path globs: ``*`` matches within one segment, ``**`` across segments.

Globs are compiled for RE2 (``google-re2``), which matches in time linear in the path: with a
backtracking engine, a rule such as ``/**/a/**/b`` took seconds of event-loop time on one long
crafted path (measured), and paths are chosen by clients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

import re2

__all__ = ["GlobMatcher", "PathGlob", "compile_alternatives", "compile_glob", "glob_regex"]


class GlobMatcher(Protocol):
    """A compiled glob (or alternation of globs): ``match`` anchors at both ends."""

    def match(self, text: str) -> Any: ...


def compile_glob(pattern: str) -> GlobMatcher:
    """Compile a path glob; ``.match(path)`` is a match of the whole path.

    ``/api/**`` matches ``/api`` and everything below it; ``/users/*/orders`` matches one
    segment in place of ``*``.
    """
    return _compile(glob_regex(pattern))


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


class PathGlob:
    """A set of path globs tested together; the empty set matches nothing."""

    __slots__ = ("_pattern", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        sources = [glob_regex(p) for p in self.patterns]
        self._pattern = _compile("|".join(f"(?:{p})" for p in sources)) if sources else None

    def matches(self, path: str) -> bool:
        return self._pattern is not None and self._pattern.match(path) is not None

"""Path globs: ``*`` matches within one segment, ``**`` across segments."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["PathGlob", "compile_glob"]


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a path glob to an anchored regular expression.

    ``/api/**`` matches ``/api`` and everything below it; ``/users/*/orders`` matches one
    segment in place of ``*``.
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
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


class PathGlob:
    """A set of path globs tested together; the empty set matches nothing."""

    __slots__ = ("_pattern", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        compiled = [compile_glob(p).pattern for p in self.patterns]
        self._pattern = (
            re.compile("|".join(f"(?:{p})" for p in compiled), re.DOTALL) if compiled else None
        )

    def matches(self, path: str) -> bool:
        return self._pattern is not None and self._pattern.match(path) is not None

"""A wall clock for cache tests, moved only by the test."""

from __future__ import annotations


class CacheClock:
    """The wall clock the tiered cache reads freshness by, advanced only by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

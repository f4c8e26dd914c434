"""A clock that moves only when the test says so, for code taking a ``clock`` callable."""

from __future__ import annotations


class ManualClock:
    """Seconds from ``start``, advanced by the test alone."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""An alert engine on a clock the test moves, for the alerting tests."""

from __future__ import annotations

from typing import Any

from bastion.observe.alerts import AlertEngine
from bastion.observe.config import AlertRuleConfig, AlertsConfig
from bastion.observe.metrics import Metrics
from manual_clock import ManualClock


class Clock(ManualClock):
    """Monotonic seconds that only move when the test says so."""

    def __init__(self) -> None:
        super().__init__(10_000.0)


def engine_for(*rules: dict[str, Any], **config: Any) -> tuple[AlertEngine, Clock, Metrics]:
    """An enabled engine with ``rules`` (and other ``[alerts]`` settings) on a fresh clock."""
    clock = Clock()
    metrics = Metrics()
    alerts = AlertEngine(
        AlertsConfig(enabled=True, rules=[AlertRuleConfig(**rule) for rule in rules], **config),
        metrics,
        clock=clock,
    )
    return alerts, clock, metrics

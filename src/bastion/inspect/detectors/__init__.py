"""The detectors, one module per attack class, and the request-level protocol checks.

Each ``detect_<class>`` module is imported when the inspector is built, so a missing or broken
detector stops start-up with an ImportError instead of silently inspecting less.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, cast

from bastion.inspect.core import Detector, Match

if TYPE_CHECKING:
    from bastion.inspect.request import InspectionRequest

__all__ = ["DETECTOR_MODULES", "default_detectors", "default_protocol_check"]

DETECTOR_MODULES = ("sqli", "xss", "rce", "lfi", "ssrf")
"""The attack classes inspected by default, in the order their detectors run."""


def default_detectors() -> list[Detector]:
    """``detect_sqli``, ``detect_xss``, ``detect_rce``, ``detect_lfi`` and ``detect_ssrf``."""
    return [
        cast(Detector, getattr(import_module(f"{__name__}.{name}"), f"detect_{name}"))
        for name in DETECTOR_MODULES
    ]


def default_protocol_check() -> Callable[[InspectionRequest, int], list[Match]]:
    """``protocol.check_protocol``: request-level anomalies, run once per request."""
    check = import_module(f"{__name__}.protocol").check_protocol
    return cast(Callable[["InspectionRequest", int], list[Match]], check)

"""Bastion: a security and performance layer for web APIs.

Inside a Python app::

    from bastion import Bastion, Settings
    app = Bastion(Settings()).wrap(app)

In front of any service: ``bastion serve --upstream URL``.

The public names are imported on first use, so ``import bastion.<module>`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.auth.dependencies import current_principal, require
    from bastion.engine import Bastion, BastionApp
    from bastion.http.principal import Principal
    from bastion.http.problems import BastionError
    from bastion.ratelimit.dependencies import rate_limit
    from bastion.settings import Settings

__all__ = [
    "Bastion",
    "BastionApp",
    "BastionError",
    "Principal",
    "Settings",
    "current_principal",
    "rate_limit",
    "require",
]
__version__ = "0.1.0"

_EXPORTS = {
    "Bastion": "bastion.engine",
    "BastionApp": "bastion.engine",
    "BastionError": "bastion.http.problems",
    "Principal": "bastion.http.principal",
    "Settings": "bastion.settings",
    "current_principal": "bastion.auth.dependencies",
    "rate_limit": "bastion.ratelimit.dependencies",
    "require": "bastion.auth.dependencies",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bastion' has no attribute {name!r}")
    return getattr(import_module(module), name)

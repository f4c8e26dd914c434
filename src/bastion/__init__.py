"""Bastion: a security and performance layer for web APIs.

Inside a Python app::

    from bastion import Bastion, Settings
    app = Bastion(Settings()).wrap(app)

In front of any service: ``bastion serve --upstream URL``.
"""

from bastion.engine import Bastion, BastionApp
from bastion.http.principal import Principal
from bastion.http.problems import BastionError
from bastion.settings import Settings

__all__ = ["Bastion", "BastionApp", "BastionError", "Principal", "Settings"]
__version__ = "0.1.0"

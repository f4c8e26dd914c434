"""The demo upstream API used by ``bastion demo``, the end-to-end tests and the benchmarks.

``create_app()`` builds the Starlette app; ``run(host, port)`` serves it on uvicorn
(``python -m bastion.demo --port 9000``).
"""

from __future__ import annotations

from bastion.demo.app import create_app
from bastion.demo.server import run, server_config

__all__ = ["create_app", "run", "server_config"]

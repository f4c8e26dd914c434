"""Serving the demo on uvicorn, tuned the way the benchmarks need it.

httptools for HTTP/1.1, uvloop when it is installed, no access log, no ``Server`` header, and the
server's own proxy-header handling off so ``/headers`` and ``client`` show the request exactly as
it arrived from whatever sits in front.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import uvicorn

from bastion.demo.app import create_app

__all__ = ["APP_FACTORY", "run", "server_config"]

APP_FACTORY = "bastion.demo.app:create_app"
"""Import string of the app factory, for uvicorn's worker processes."""


def _options(host: str, port: int, log_level: str) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "http": "httptools",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio",
        "log_level": log_level,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
        "lifespan": "off",
    }


def server_config(
    host: str = "127.0.0.1", port: int = 9000, *, log_level: str = "warning"
) -> uvicorn.Config:
    """A uvicorn configuration serving a fresh demo app (for running it inside another program)."""
    return uvicorn.Config(create_app(), **_options(host, port, log_level))


def run(
    host: str = "127.0.0.1", port: int = 9000, *, workers: int = 1, log_level: str = "warning"
) -> None:
    """Serve the demo until interrupted; with ``workers > 1`` each process has its own catalog."""
    if workers > 1:
        uvicorn.run(APP_FACTORY, factory=True, workers=workers, **_options(host, port, log_level))
    else:
        uvicorn.Server(server_config(host, port, log_level=log_level)).run()

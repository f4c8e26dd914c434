"""The gateway's plumbing alone: Bastion's HTTP server and proxy terminal with no stage.

``python -m bench.floor --config FILE --upstream URL --port N`` serves what ``bastion serve``
serves (the same server protocol and options, the same pooled upstream client and forwarder,
started and stopped by the same engine) but hands each request straight to the proxy terminal:
the request state the terminal reads is created, the route matched, and nothing else runs. Its
rps, next to direct access and to the full gateway, shows how much of the gateway's cost is the
HTTP plumbing (parsing, the ASGI cycle, the upstream exchange, the system calls) and how much
the stages.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from bastion import Bastion, Settings
from bastion.cli.serve_cmd import server_options
from bastion.engine import BastionApp
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.server import ServerConfig
from bastion.http.state import RequestState
from bastion.observe.logging import configure_logging
from bastion.proxy.gateway import Proxy

__all__ = ["FloorApp", "floor_app"]


class FloorApp:
    """Lifespan through the full gateway (so the engine and the pools start as they do in
    ``bastion serve``); every request straight to the proxy terminal."""

    def __init__(self, engine: Bastion, gateway: BastionApp, proxy: ASGIApp) -> None:
        self._gateway = gateway
        self._proxy = proxy
        self._routes = engine.deps.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._gateway(scope, receive, send)
            return
        client = scope.get("client")
        state = RequestState(
            "0" * 32, time.perf_counter(), client[0] if client else "", scope.get("scheme", "http")
        )
        state.route = self._routes.match(scope["path"], None)
        scope["state"] = {"bastion": state}
        await self._proxy(scope, receive, send)


def floor_app(settings: Settings) -> FloorApp:
    """The gateway of ``settings`` with every stage bypassed."""
    engine = Bastion(settings)
    gateway = engine.gateway()
    node: object = gateway.pipeline
    while not isinstance(node, Proxy):
        node = node.app  # type: ignore[attr-defined]
    return FloorApp(engine, gateway, node)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_file(args.config).with_upstream(args.upstream)
    configure_logging(settings.logging)
    config = ServerConfig(
        floor_app(settings), **server_options(settings, host="127.0.0.1", port=args.port)
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

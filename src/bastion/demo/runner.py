"""``bastion demo``: the demo upstream and the gateway in one process, ready to try."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import uvicorn

from bastion.demo.server import server_config
from bastion.engine import Bastion
from bastion.http.server import ServerConfig
from bastion.observe.logging import configure_logging
from bastion.settings import Settings
from bastion.store.config import StoreConfig

__all__ = ["run_demo"]


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _banner(gateway: str, upstream: str) -> str:
    return f"""
Bastion demo
  gateway   {gateway}   (try it)
  upstream  {upstream}   (the demo API behind it)
  health    {gateway}/_bastion/health
  metrics   {gateway}/_bastion/metrics

Three things to try:
  curl -i {gateway}/items
  curl -i -X POST {gateway}/items -H 'content-type: application/json' \\
       -d '{{"name": "lamp", "price": 12.5, "tags": ["home"]}}'
  curl -i {gateway}/items -H 'X-Forwarded-For: 203.0.113.9'   # not trusted: ignored

Press Ctrl+C to stop.
"""


def run_demo(settings: Settings, *, host: str, port: int) -> None:
    """Serve the demo upstream on a free loopback port and the gateway on ``host:port``."""
    asyncio.run(_serve(settings, host, port))


async def _serve(settings: Settings, host: str, port: int) -> None:
    configure_logging(settings.logging, "console")
    upstream_port = _free_port("127.0.0.1")
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    with tempfile.TemporaryDirectory(prefix="bastion-demo-") as data:
        if "store" not in settings.model_fields_set:
            database = f"sqlite+aiosqlite:///{Path(data) / 'bastion.db'}"
            settings = settings.with_updates(store=StoreConfig(database_url=database))
        settings = settings.with_upstream(upstream_url)
        upstream = uvicorn.Server(server_config("127.0.0.1", upstream_port))
        gateway = uvicorn.Server(
            ServerConfig(
                Bastion(settings).gateway(),
                host=host,
                port=port,
                loop="uvloop",
                lifespan="on",
                proxy_headers=False,
                server_header=False,
                access_log=False,
                log_level="warning",
                max_header_bytes=settings.limits.max_header_bytes,
                max_url_bytes=settings.limits.max_url_bytes,
                header_timeout=settings.server.header_timeout,
            )
        )
        upstream_task = asyncio.create_task(upstream.serve())
        while not upstream.started:
            if upstream_task.done():
                await upstream_task
                return
            await asyncio.sleep(0.05)
        print(_banner(f"http://{host}:{port}", upstream_url), flush=True)
        try:
            await gateway.serve()
        finally:
            upstream.should_exit = True
            await upstream_task

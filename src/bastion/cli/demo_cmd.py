"""``bastion demo``: the gateway in front of the built-in demo API."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.cli.common import ConfigOption, load_settings

__all__ = ["demo"]


def demo(
    port: Annotated[int, typer.Option(help="Port of the gateway.")] = 8080,
    host: Annotated[str, typer.Option(help="Listen address of the gateway.")] = "127.0.0.1",
    config: ConfigOption = None,
) -> None:
    """Run the gateway on HOST:PORT in front of the demo upstream; prints URLs to try."""
    from bastion.demo.runner import run_demo

    run_demo(load_settings(config), host=host, port=port)

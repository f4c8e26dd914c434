"""``bastion demo``: the gateway in front of the built-in demo API, with demo users."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.cli.common import EXIT_RUNTIME, ConfigOption, fail, load_settings
from bastion.store.errors import StoreError

__all__ = ["demo"]


def demo(
    port: Annotated[int, typer.Option(help="Port of the gateway.")] = 8080,
    host: Annotated[str, typer.Option(help="Listen address of the gateway.")] = "127.0.0.1",
    config: ConfigOption = None,
) -> None:
    """Run the gateway on HOST:PORT in front of the demo upstream, with two demo users; prints
    URLs, credentials and commands to try."""
    from bastion.demo.runner import run_demo

    settings = load_settings(config)
    try:
        run_demo(settings, host=host, port=port)
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)

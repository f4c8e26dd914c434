"""What every command shares: the ``--config`` option, loading settings, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from bastion.settings import ConfigError, Settings

__all__ = ["EXIT_CONFIG", "EXIT_RUNTIME", "EXIT_VERIFY", "ConfigOption", "fail", "load_settings"]

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_VERIFY = 3

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $BASTION_CONFIG, else ./bastion.toml if present).",
        dir_okay=False,
    ),
]


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` to standard error and exit with ``code``."""
    typer.echo(f"bastion: {message}", err=True)
    raise typer.Exit(code)


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or the default file) and the environment; exit 2 naming the
    offending key when they are invalid."""
    try:
        return Settings.load(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)

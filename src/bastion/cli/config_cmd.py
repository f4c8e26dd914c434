"""``bastion config check FILE`` and ``bastion config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from bastion.cli.common import EXIT_CONFIG, ConfigOption, fail, load_settings
from bastion.settings import ConfigError, Settings

app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Configuration file to validate.", dir_okay=False)],
) -> None:
    """Validate FILE (and the BASTION_* environment); exit 2 naming each offending key."""
    try:
        Settings.from_file(file)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(f"{file}: ok")


@app.command("show")
def show(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON, secrets redacted."""
    settings = load_settings(config)
    typer.echo(orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode())

"""``bastion waf scan FILE.jsonl``: the inspection engine over a request corpus."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from bastion.cli.common import EXIT_RUNTIME, ConfigOption, fail, load_settings
from bastion.inspect.engine import Inspector
from bastion.inspect.evaluate import Tally, read_records, scan, verdict_json

__all__ = ["app"]

app = typer.Typer(help="Request inspection (WAF).", no_args_is_help=True)


@app.command("scan")
def scan_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="JSONL request corpus files (schema: shared/corpus/waf/README.md).",
            exists=True,
            dir_okay=False,
        ),
    ],
    paranoia: Annotated[
        int | None,
        typer.Option("--paranoia", "-p", min=1, max=4, help="Paranoia level (default: config)."),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="Print detection per category and false-positive rates "
            "instead of one verdict per line.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Inspect every request of FILE and print one JSON verdict per line:
    {"id", "blocked", "score", "matches": [{"rule", "category", "location"}]}.

    "blocked" says whether the score reached the threshold, whatever [inspect] mode says.
    """
    settings = load_settings(config)
    inspect_config = settings.inspect.model_copy(update={"mode": "block", "routes": []})
    if paranoia is not None:
        inspect_config = inspect_config.model_copy(update={"paranoia": paranoia})
    inspector = Inspector(inspect_config)
    tally = Tally()
    out = sys.stdout.buffer
    try:
        for path in files:
            for record, verdict, seconds in scan(inspector, read_records(path)):
                if summary:
                    tally.add(record, verdict, seconds)
                else:
                    out.write(verdict_json(record.id, verdict) + b"\n")
    except (OSError, orjson.JSONDecodeError) as exc:
        fail(f"cannot read the corpus: {exc}", EXIT_RUNTIME)
    if summary:
        typer.echo(tally.summary())
    else:
        out.flush()

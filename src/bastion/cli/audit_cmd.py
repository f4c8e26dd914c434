"""``bastion audit``: verify the hash chain, export events, follow the log.

Every command reads ``store.database_url`` (applying pending migrations first when
``store.auto_migrate``). Output goes to standard output, diagnostics to standard error; exit
codes follow DESIGN.md §2: 0 ok, 1 runtime failure (the database), 2 usage, 3 ``verify`` found
the chain broken.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import orjson
import typer

from bastion.audit.api import check_actor, check_kind, parse_time
from bastion.audit.reader import FIELDS, MAX_LIMIT, AuditFilter, AuditReader
from bastion.audit.store import open_audit
from bastion.audit.verify import VerifyReport
from bastion.cli.common import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    EXIT_VERIFY,
    ConfigOption,
    fail,
    load_settings,
    log_to_stderr,
)
from bastion.settings import Settings
from bastion.store.errors import StoreError

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="The audit log: verify its hash chain, export and follow events.", no_args_is_help=True
)


class Format(StrEnum):
    """Export formats."""

    jsonl = "jsonl"
    csv = "csv"


TimeOption = Annotated[
    str | None,
    typer.Option(
        help="RFC 3339 time with an offset (2026-01-31T12:00:00Z) or a duration back "
        "from now (15m, 1h, 7d)."
    ),
]
KindOption = Annotated[
    str | None,
    typer.Option("--kind", help="Only this kind (auth.login.failed), or a family (auth.*)."),
]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Only events of this actor.")]


def _run(settings: Settings, operation: Callable[[AuditReader], Awaitable[T]]) -> T:
    """Run ``operation`` over the database; exit 1 with the reason when it fails."""
    log_to_stderr()

    async def main() -> T:
        async with open_audit(settings) as audit:
            return await operation(AuditReader(audit.database))

    try:
        return asyncio.run(main())
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        fail(f"--{name} {exc}", EXIT_CONFIG)


def _checked(name: str, value: str | None, check: Callable[[str], str]) -> str | None:
    if value is None:
        return None
    try:
        return check(value)
    except ValueError as exc:
        fail(f"--{name} {exc}", EXIT_CONFIG)


def _filter(
    kind: str | None, actor: str | None, since: str | None = None, until: str | None = None
) -> AuditFilter:
    """The filter of the command's options; exit 2 naming the option that is malformed."""
    first, last = _moment("since", since), _moment("until", until)
    if first is not None and last is not None and first >= last:
        fail("--until must be later than --since", EXIT_CONFIG)
    return AuditFilter(
        kind=_checked("kind", kind, check_kind),
        actor=_checked("actor", actor, check_actor),
        since=first,
        until=last,
    )


class _Output:
    """Standard output written a batch at a time; a reader that goes away (``| head``) ends
    the command quietly."""

    def __init__(self) -> None:
        self._stream = sys.stdout
        self.closed = False

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:
            self.closed = True
            # What is still buffered would fail again at exit: standard output goes nowhere now.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


def _jsonl(record: dict[str, Any]) -> str:
    return orjson.dumps(record).decode() + "\n"


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a cell starting with one of these as a formula (CSV injection)."""


def _csv_cell(value: Any) -> Any:
    """A text cell that cannot run as a formula: ``'`` put before a leading ``= + - @``, tab or
    carriage return (the OWASP advice), so ``=HYPERLINK(…)`` in a target stays text."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _CsvRows:
    """Events as CSV rows: :data:`FIELDS` as the header, ``detail`` as JSON text, text cells
    that would start a formula prefixed with ``'``."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def header(self) -> str:
        self._writer.writerow(FIELDS)
        return self._take()

    def row(self, record: dict[str, Any]) -> str:
        values = [record[name] for name in FIELDS]
        values[FIELDS.index("detail")] = orjson.dumps(record["detail"]).decode()
        self._writer.writerow([_csv_cell(v) for v in values])
        return self._take()

    def _take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


_FLUSH_EVERY = 500
"""Events buffered before a write to standard output."""


async def _export(
    reader: AuditReader, query: AuditFilter, output_format: Format, out: _Output
) -> int:
    rows = _CsvRows()
    render = rows.row if output_format is Format.csv else _jsonl
    pending: list[str] = [rows.header()] if output_format is Format.csv else []
    count = 0
    async for record in reader.stream(query):
        pending.append(render(record))
        count += 1
        if len(pending) >= _FLUSH_EVERY:
            out.write("".join(pending))
            pending.clear()
            if out.closed:
                break
    out.write("".join(pending))
    return count


@app.command("export")
def export(
    since: TimeOption = None,
    until: TimeOption = None,
    kind: KindOption = None,
    actor: ActorOption = None,
    output_format: Annotated[
        Format, typer.Option("--format", help="jsonl: one JSON object per line; csv: a header row.")
    ] = Format.jsonl,
    config: ConfigOption = None,
) -> None:
    """Write events to standard output, oldest first (streamed: memory stays bounded)."""
    query = _filter(kind, actor, since, until)
    settings = load_settings(config)
    out = _Output()
    _run(settings, lambda reader: _export(reader, query, output_format, out))


async def _tail(
    reader: AuditReader, query: AuditFilter, lines: int, follow: bool, interval: float, out: _Output
) -> None:
    newest = await reader.page(AuditFilter(kind=query.kind, actor=query.actor, limit=lines))
    last = 0
    for record in reversed(newest.events):
        out.write(_jsonl(record))
        last = record["seq"]
    if not follow:
        return
    # With nothing matching yet, following from 0 prints only what matches from now on: the
    # (kind, seq) and (actor, seq) indexes keep those polls cheap.
    while not out.closed:
        await asyncio.sleep(interval)
        async for record in reader.stream(query, after_seq=last):
            out.write(_jsonl(record))
            last = record["seq"]


@app.command("tail")
def tail(
    lines: Annotated[
        int, typer.Option("-n", "--lines", min=1, max=MAX_LIMIT, help="How many recent events.")
    ] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they are committed.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between polls with --follow.")
    ] = 1.0,
    kind: KindOption = None,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the latest events as JSON lines; with --follow, keep printing new ones."""
    query = _filter(kind, actor)
    settings = load_settings(config)
    out = _Output()
    try:
        _run(settings, lambda reader: _tail(reader, query, lines, follow, interval, out))
    except KeyboardInterrupt:
        return


async def _verify(settings: Settings) -> VerifyReport:
    async with open_audit(settings) as audit:
        return await audit.verify()


@app.command("verify")
def verify(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Recompute the hash chain; exit 3 naming the first bad seq when it is broken."""
    settings = load_settings(config)
    log_to_stderr()
    try:
        report = asyncio.run(_verify(settings))
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)
    if json_output:
        typer.echo(orjson.dumps(dataclasses.asdict(report)).decode())
    elif report.ok:
        span = (
            f"seq {report.anchor_seq + 1} to {report.head_seq}"
            if report.head_seq > report.anchor_seq
            else "no events"
        )
        typer.echo(f"audit chain intact: {report.checked} events verified ({span})")
    else:
        typer.echo(
            f"audit chain broken at seq {report.first_bad_seq}: {report.reason}"
            + (f" ({report.detail})" if report.detail else "")
        )
    if not report.ok:
        raise typer.Exit(EXIT_VERIFY)

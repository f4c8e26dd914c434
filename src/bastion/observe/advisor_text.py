"""The readable form of an :class:`~bastion.observe.advisor.AdvisorReport`: one rich table per
section, each with a line saying what to do about it."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bastion.observe.advisor import AdvisorReport, DuplicateIndex

__all__ = ["render_text"]

_QUERY_WIDTH = 100
_HIT_TARGET = 99.0
"""Below this buffer-cache hit percentage an OLTP database usually lacks memory or indexes."""
_BLOAT_NOTABLE = 20.0


def render_text(report: AdvisorReport, console: Console) -> None:
    """Print ``report`` as headed sections of tables."""
    info = report.database
    console.print(
        f"[bold]Database {escape(info.name)}[/bold]: PostgreSQL {escape(info.server_version)}, "
        f"{_size(info.size_bytes)}; statistics since "
        f"{info.stats_reset or 'the database was created'}"
    )
    _statements(report, console)
    _unused(report, console)
    _duplicates(
        console,
        "Duplicate indexes",
        report.duplicate_indexes,
        "Identical to another index on the same table: drop the first one.",
    )
    _duplicates(
        console,
        "Prefix-redundant indexes",
        report.prefix_indexes,
        "Its columns lead a longer index that serves the same lookups: usually safe to drop.",
    )
    _seq_scans(report, console)
    _foreign_keys(report, console)
    _cache(report, console)
    _bloat(report, console)


def _heading(console: Console, title: str, advice: str) -> None:
    console.print()
    console.print(f"[bold underline]{title}[/bold underline]")
    console.print(advice)


def _statements(report: AdvisorReport, console: Console) -> None:
    section = report.statements
    _heading(console, "Top statements by total time", "From pg_stat_statements.")
    if not section.available:
        console.print(Text(section.reason or "", style="yellow"))
        return
    if not section.items:
        console.print("none recorded yet")
        return
    table = Table("total ms", "share %", "calls", "mean ms", "rows", "statement")
    for item in section.items:
        query = item.query if len(item.query) <= _QUERY_WIDTH else item.query[:_QUERY_WIDTH] + "…"
        _row(
            table,
            f"{item.total_ms:,.1f}",
            _pct(item.share_pct),
            f"{item.calls:,}",
            f"{item.mean_ms:,.2f}",
            f"{item.rows:,}",
            query,
        )
    console.print(table)


def _unused(report: AdvisorReport, console: Console) -> None:
    _heading(
        console,
        "Unused indexes",
        "Never scanned since the statistics were reset; each slows every write and takes space. "
        "Check replicas too before dropping one (their scans are counted there).",
    )
    if not report.unused_indexes:
        console.print("none")
        return
    table = Table("table", "index", "size", "definition")
    for index in report.unused_indexes:
        _row(
            table,
            f"{index.schema}.{index.table}",
            index.index,
            _size(index.size_bytes),
            index.definition,
        )
    console.print(table)


def _duplicates(console: Console, title: str, items: Sequence[DuplicateIndex], advice: str) -> None:
    _heading(console, title, advice)
    if not items:
        console.print("none")
        return
    table = Table("table", "index", "size", "covered by")
    for item in items:
        _row(
            table,
            f"{item.schema}.{item.table}",
            item.index,
            _size(item.size_bytes),
            f"{item.duplicate_of}: {item.duplicate_of_definition}",
        )
    console.print(table)


def _seq_scans(report: AdvisorReport, console: Console) -> None:
    limits = report.thresholds
    _heading(
        console,
        "Tables read mostly by sequential scans",
        f"At least {limits.min_rows:,} rows and {limits.min_seq_scans} sequential scans, fewer "
        f"than {limits.max_index_pct}% of scans by index: an index on the columns the queries "
        "filter on would spare reading the whole table.",
    )
    if not report.seq_scan_tables:
        console.print("none")
        return
    table = Table("table", "rows", "seq scans", "index scans", "rows/seq scan", "candidates")
    for item in report.seq_scan_tables:
        candidates = "; ".join(
            ", ".join(candidate.columns)
            + (
                " (foreign key)"
                if candidate.reason == "foreign_key"
                else f" (~{candidate.distinct:,.0f} distinct)"
            )
            for candidate in item.candidates
        )
        if not candidates:
            candidates = "see the statements filtering this table"
        _row(
            table,
            f"{item.schema}.{item.table}",
            f"{item.rows:,}",
            f"{item.seq_scans:,}",
            f"{item.index_scans:,} ({item.index_pct}%)",
            f"{item.avg_rows_per_seq_scan:,}",
            candidates,
        )
    console.print(table)


def _foreign_keys(report: AdvisorReport, console: Console) -> None:
    _heading(
        console,
        "Foreign keys without an index",
        "Deleting or updating a referenced row scans the whole referencing table, and joins on "
        "the key cannot use an index.",
    )
    if not report.unindexed_foreign_keys:
        console.print("none")
        return
    table = Table("table", "columns", "references", "rows", "suggestion")
    for key in report.unindexed_foreign_keys:
        _row(
            table,
            f"{key.schema}.{key.table}",
            ", ".join(key.columns),
            key.references,
            f"{key.rows:,}",
            key.suggestion,
        )
    console.print(table)


def _cache(report: AdvisorReport, console: Console) -> None:
    cache = report.cache
    _heading(
        console,
        "Buffer cache hit ratio",
        f"Blocks found in shared_buffers; below {_HIT_TARGET:g}% a busy database usually needs "
        "more memory or fewer sequential scans (reads from the OS page cache count as misses).",
    )
    console.print(
        f"database {_percent(cache.database_hit_pct)}, tables {_percent(cache.heap_hit_pct)}, "
        f"indexes {_percent(cache.index_hit_pct)}"
    )
    if not cache.tables:
        return
    table = Table("table", "heap hit %", "index hit %", "heap reads", "index reads")
    for item in cache.tables:
        _row(
            table,
            f"{item.schema}.{item.table}",
            _pct(item.heap_hit_pct),
            _pct(item.index_hit_pct),
            f"{item.heap_reads:,}",
            f"{item.index_reads:,}",
        )
    console.print(table)


def _bloat(report: AdvisorReport, console: Console) -> None:
    _heading(console, "Table bloat", f"Method: {escape(report.bloat.method)}")
    if not report.bloat.tables:
        console.print("no user tables")
        return
    table = Table("table", "size", "est. bloat", "bloat %", "dead rows", "dead %", "last vacuum")
    for item in report.bloat.tables:
        notable = item.bloat_pct is not None and item.bloat_pct >= _BLOAT_NOTABLE
        _row(
            table,
            f"{item.schema}.{item.table}",
            _size(item.size_bytes),
            "n/a" if item.bloat_bytes is None else _size(item.bloat_bytes),
            Text(_pct(item.bloat_pct), style="yellow" if notable else ""),
            f"{item.dead_tuples:,}",
            _pct(item.dead_pct),
            item.last_vacuum or "never",
        )
    console.print(table)
    console.print(
        f"Above ~{_BLOAT_NOTABLE:g}%: check that autovacuum keeps up; reclaiming the space "
        "needs VACUUM FULL or pg_repack."
    )


def _row(table: Table, *cells: str | Text) -> None:
    """Add a row whose plain strings are shown as written (names and SQL may hold ``[``)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _size(size: int) -> str:
    value = float(size)
    if value < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"

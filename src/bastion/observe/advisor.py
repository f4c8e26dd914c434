"""``bastion db advise``: what to fix in a PostgreSQL database, from its catalogs and statistics.

:func:`advise` connects read-only, runs the queries of :mod:`bastion.observe.advisor_sql` and
turns their facts into an :class:`AdvisorReport`: top statements (``pg_stat_statements``),
unused, duplicate and prefix-redundant indexes, sequential-scan-heavy tables with candidate
columns, foreign keys without a supporting index, buffer cache hit ratios and table bloat.
:meth:`AdvisorReport.to_dict` is the JSON document (schema in ``docs/database.md``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.observe import advisor_sql as sql
from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.errors import StoreError, describe

__all__ = [
    "SCHEMA_VERSION",
    "AdvisorReport",
    "AdvisorUrlError",
    "Thresholds",
    "advise",
    "normalise_url",
]

SCHEMA_VERSION = 1
"""Version of the JSON document; bumped only when a field is removed or changes meaning."""

_POSTGRES_DRIVERS = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
_URL_PARAMETERS = frozenset({"host", "ssl", "passfile", "target_session_attrs"})
"""Query parameters of the URL the driver understands (``sslmode`` is accepted as ``ssl``)."""
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^:\[\]]*)(?::(\d*))?")
"""One item of the ``host`` parameter: a name, an address or ``[IPv6]``, then an optional port."""
_MAX_QUERY_TEXT = 2000
_TIMEOUT_STATES = frozenset({"55P03", "57014"})
"""lock_not_available (``lock_timeout``) and query_canceled (``statement_timeout``)."""
_NOT_PRELOADED = "55000"
"""object_not_in_prerequisite_state: the library is not in ``shared_preload_libraries``."""
_PASSWORD_LITERAL = re.compile(
    r"(?is)(\bpassword\s+)(?:(?:E|U&)?'(?:[^'\\]|''|\\.)*'|\$(\w*)\$.*?\$\2\$)"
)
"""``PASSWORD`` followed by any string form: plain, ``E'…'`` (backslash escapes; a backslash
in a plain string only makes the mask longer), ``U&'…'`` or dollar-quoted ``$tag$…$tag$``."""
_CONNINFO_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)[^\s]+")
"""``password=…`` of a connection string inside any literal (``dblink('… password=…')``)."""
_SECRET_STATEMENT = re.compile(
    r"(?is)^(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
    r"((?:create|alter)\s+(?:role|user\s+mapping|user|group|subscription|server))\b"
)
"""Statements whose text can hold a password in any form, including a quoted connection string
(``CONNECTION '… password=…'``): their whole text is withheld, only the command is shown."""
_ENABLE_HINT = (
    "add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart the "
    "server, then run CREATE EXTENSION pg_stat_statements in this database"
)
BLOAT_METHOD = (
    "statistics-based estimate: the pages a table occupies against the pages its row count and "
    "average row width (pg_stats) need at its fill factor, as in the ioguix/pgexperts bloat "
    "queries; approximate (typically within ±20%), none for tables never analysed. The dead "
    "tuple ratio (n_dead_tup) is the exact count of rows waiting for VACUUM."
)


class AdvisorUrlError(ValueError):
    """The database URL is not a PostgreSQL URL the advisor accepts (a usage error)."""


def normalise_url(url: str) -> str:
    """``postgresql+asyncpg://…`` for a ``postgresql+asyncpg://``, ``postgresql://`` or
    ``postgres://`` URL; :class:`AdvisorUrlError` otherwise. Messages never repeat the URL (it
    may hold a password)."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise AdvisorUrlError(
            "not a database URL: expected postgresql://user@host:port/database"
        ) from exc
    if parsed.drivername not in _POSTGRES_DRIVERS:
        raise AdvisorUrlError(
            f"the advisor needs a PostgreSQL URL (postgresql://…), not {parsed.drivername}://"
        )
    if not parsed.host and not parsed.query.get("host"):
        raise AdvisorUrlError("the PostgreSQL URL names no host: postgresql://user@host/database")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise AdvisorUrlError("the PostgreSQL URL's port is out of range")
    repeated = sorted(name for name, value in parsed.query.items() if not isinstance(value, str))
    if repeated:
        raise AdvisorUrlError(f"the URL parameter {repeated[0]!r} is given more than once")
    query = {name: value for name, value in parsed.query.items() if isinstance(value, str)}
    if "sslmode" in query and "ssl" in query:
        raise AdvisorUrlError("give either sslmode or ssl in the URL, not both")
    for name in ("ssl", "sslmode"):
        if name in query and query[name] not in _SSL_MODES:
            raise AdvisorUrlError(
                f"the URL parameter {name!r} must be one of: {', '.join(sorted(_SSL_MODES))}"
            )
    if "host" in query:
        _check_hosts(query["host"])
    if "sslmode" in query:
        # libpq's name; asyncpg's ssl parameter takes the same values.
        query.setdefault("ssl", query.pop("sslmode"))
    unknown = sorted(set(query) - _URL_PARAMETERS)
    if unknown:
        raise AdvisorUrlError(
            f"unsupported URL parameter {unknown[0]!r} "
            f"(accepted: {', '.join(sorted(_URL_PARAMETERS | {'sslmode'}))})"
        )
    normalised = parsed.set(drivername="postgresql+asyncpg", query=query)
    return normalised.render_as_string(hide_password=False)


def _check_hosts(hosts: str) -> None:
    """The ``host`` parameter: socket directories or ``host[:port]`` items, comma-separated."""
    for item in hosts.split(","):
        if item.startswith("/"):
            continue
        match = _HOST_PORT.fullmatch(item)
        if match is None or not item:
            raise AdvisorUrlError("the URL parameter 'host' is not a host[:port] list")
        port = match.group(1)
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise AdvisorUrlError("a port in the URL parameter 'host' is not 1-65535")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What the report considers worth a line."""

    top: int = 10
    """Rows of the ranked sections (statements, cache per table, bloat)."""
    min_rows: int = 10_000
    """A table smaller than this is never reported for sequential scans: scanning it is cheap."""
    min_seq_scans: int = 10
    """Sequential scans a table needs before its scan mix means anything."""
    max_index_pct: int = 95
    """A table is sequential-scan heavy when fewer than this share of its scans use an index."""


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    name: str
    server_version: str
    size_bytes: int
    stats_reset: str | None
    """When the cumulative statistics were last reset (``null``: never since the database was
    created); every counter below counts from then."""


@dataclass(frozen=True, slots=True)
class Statement:
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    share_pct: float | None


@dataclass(frozen=True, slots=True)
class Statements:
    available: bool
    reason: str | None
    """Why there are no statements: the extension is not installed here or not loaded."""
    items: list[Statement] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UnusedIndex:
    schema: str
    table: str
    index: str
    size_bytes: int
    definition: str


@dataclass(frozen=True, slots=True)
class DuplicateIndex:
    schema: str
    table: str
    index: str
    """The index to drop."""
    size_bytes: int
    definition: str
    duplicate_of: str
    """The index that already does its work (kept)."""
    duplicate_of_definition: str


@dataclass(frozen=True, slots=True)
class Candidate:
    columns: list[str]
    reason: str
    """``foreign_key`` (a foreign key without an index) or ``selective`` (many distinct values
    and no index starting with the column)."""
    distinct: float | None = None
    """Estimated distinct values (``selective`` candidates)."""


@dataclass(frozen=True, slots=True)
class SeqScanTable:
    schema: str
    table: str
    rows: int
    size_bytes: int
    seq_scans: int
    index_scans: int
    index_pct: float
    """Share of the table's scans that used an index."""
    avg_rows_per_seq_scan: int
    has_indexes: bool
    candidates: list[Candidate]


@dataclass(frozen=True, slots=True)
class UnindexedForeignKey:
    schema: str
    table: str
    constraint: str
    columns: list[str]
    references: str
    rows: int
    suggestion: str


@dataclass(frozen=True, slots=True)
class TableCache:
    schema: str
    table: str
    heap_hit_pct: float | None
    index_hit_pct: float | None
    heap_reads: int
    index_reads: int


@dataclass(frozen=True, slots=True)
class CacheReport:
    database_hit_pct: float | None
    heap_hit_pct: float | None
    index_hit_pct: float | None
    tables: list[TableCache]


@dataclass(frozen=True, slots=True)
class TableBloat:
    schema: str
    table: str
    size_bytes: int
    bloat_bytes: int | None
    bloat_pct: float | None
    live_tuples: int
    dead_tuples: int
    dead_pct: float | None
    last_vacuum: str | None


@dataclass(frozen=True, slots=True)
class BloatReport:
    method: str
    tables: list[TableBloat]


@dataclass(frozen=True, slots=True)
class AdvisorReport:
    """Everything ``bastion db advise`` found, section by section."""

    generated_at: str
    database: DatabaseInfo
    thresholds: Thresholds
    statements: Statements
    unused_indexes: list[UnusedIndex]
    duplicate_indexes: list[DuplicateIndex]
    prefix_indexes: list[DuplicateIndex]
    """Indexes whose key columns lead another index on the same table (usually redundant)."""
    seq_scan_tables: list[SeqScanTable]
    unindexed_foreign_keys: list[UnindexedForeignKey]
    cache: CacheReport
    bloat: BloatReport

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``schema_version`` first)."""
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}


async def advise(
    url: str, *, thresholds: Thresholds | None = None, query_timeout: float = 10.0
) -> AdvisorReport:
    """Connect to ``url`` (any accepted PostgreSQL form) read-only and build the report.

    :class:`AdvisorUrlError` for a URL that is not PostgreSQL; :class:`StoreError` when the
    server does not answer or a query fails (its message never holds the password).
    """
    limits = thresholds or Thresholds()
    config = StoreConfig(
        database_url=normalise_url(url), timeout=query_timeout, pool_size=1, slow_query=0
    )
    database = Database(config)
    try:
        await database.start()
    except (ValueError, TypeError, ArgumentError) as exc:
        raise AdvisorUrlError(f"the driver refused the URL: {describe(exc)}") from exc
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SET TRANSACTION READ ONLY"))
            # Only the system catalogs resolve unqualified names: a function or operator the
            # database owner planted in another schema (CVE-2018-1058) never runs as us.
            await connection.execute(text("SET LOCAL search_path = pg_catalog, pg_temp"))
            # Catalog reads wait behind an ACCESS EXCLUSIVE lock (a running ALTER TABLE):
            # give up rather than hang. The server gives up a little before the driver does, so
            # a query that runs too long fails alone (its section says so) instead of the
            # driver dropping the whole connection.
            limit_ms = max(1, int(query_timeout * 800))
            await connection.execute(text(f"SET LOCAL lock_timeout = {limit_ms}"))
            await connection.execute(text(f"SET LOCAL statement_timeout = {limit_ms}"))
            return await _report(connection, limits)
    except ArgumentError as exc:
        raise AdvisorUrlError(f"the driver refused the URL: {describe(exc)}") from exc
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise StoreError(f"advisor query failed: {describe(exc)}") from exc
    finally:
        await database.close()


async def _rows(connection: AsyncConnection, query: str, **params: Any) -> list[dict[str, Any]]:
    result = await connection.execute(text(query), params)
    return [dict(row._mapping) for row in result]


async def _report(connection: AsyncConnection, limits: Thresholds) -> AdvisorReport:
    [server] = await _rows(connection, sql.SERVER)
    indexes = [_Index(row) for row in await _rows(connection, sql.INDEXES)]
    duplicates, prefixes = _duplicate_indexes(indexes)
    foreign_keys = await _rows(connection, sql.FOREIGN_KEYS)
    unindexed = _unindexed_foreign_keys(foreign_keys, indexes)
    sole_supports = _sole_foreign_key_supports(foreign_keys, indexes)
    return AdvisorReport(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        database=DatabaseInfo(
            name=server["name"],
            server_version=server["server_version"],
            size_bytes=int(server["size_bytes"]),
            stats_reset=_timestamp(server["stats_reset"]),
        ),
        thresholds=limits,
        statements=await _statements(connection, limits.top),
        unused_indexes=[
            UnusedIndex(r["schema"], r["table"], r["index"], int(r["size_bytes"]), r["definition"])
            for r in await _rows(connection, sql.UNUSED_INDEXES)
            if r["oid"] not in sole_supports
        ],
        duplicate_indexes=duplicates,
        prefix_indexes=prefixes,
        seq_scan_tables=await _seq_scan_tables(connection, limits, indexes, unindexed),
        unindexed_foreign_keys=unindexed,
        cache=await _cache(connection, limits.top),
        bloat=BloatReport(
            BLOAT_METHOD, [_bloat(r) for r in await _rows(connection, sql.BLOAT, top=limits.top)]
        ),
    )


async def _statements(connection: AsyncConnection, top: int) -> Statements:
    extension = await _rows(connection, sql.STATEMENTS_EXTENSION)
    if not extension:
        return Statements(
            False, f"pg_stat_statements is not installed in this database: {_ENABLE_HINT}"
        )
    query = sql.statements_query(extension[0]["schema"], extension[0]["version"])
    try:
        # A savepoint: when the library is not preloaded the query fails, and the
        # transaction must stay usable for the other sections.
        async with connection.begin_nested():
            rows = await _rows(connection, query, top=top)
    except (StatementError, TimeoutError) as exc:
        return Statements(False, _statements_failure(exc))
    return Statements(
        True,
        None,
        [
            Statement(
                query=_redacted(row["query"] or ""),
                calls=int(row["calls"]),
                total_ms=round(float(row["total_ms"]), 3),
                mean_ms=round(float(row["mean_ms"]), 3),
                rows=int(row["rows"]),
                share_pct=_round(row["share_pct"]),
            )
            for row in rows
        ],
    )


def _statements_failure(exc: StatementError | TimeoutError) -> str:
    """Why the statements could not be read: not preloaded (with the way to enable it), a lock
    or query timeout, or another error, each said as it is."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(cause, TimeoutError) or state in _TIMEOUT_STATES:
        return (
            "reading pg_stat_statements did not finish within the query timeout "
            f"({describe(cause)}); the other sections are complete"
        )
    if state == _NOT_PRELOADED:
        return f"pg_stat_statements is installed but cannot be read: {_ENABLE_HINT}"
    return f"pg_stat_statements could not be read ({describe(cause)})"


def _redacted(query: str) -> str:
    """Statement text with secrets masked (``ALTER ROLE … PASSWORD '…'`` is kept as written by
    pg_stat_statements), on one line, cut to a readable length.

    Role, user mapping, subscription and foreign server statements show only their command;
    elsewhere ``PASSWORD <literal>`` and ``password=…`` are masked."""
    secret = _SECRET_STATEMENT.match(query)
    if secret:
        return " ".join(secret.group(1).upper().split()) + " … (text withheld: may hold a password)"
    masked = _CONNINFO_PASSWORD.sub(r"\1***", _PASSWORD_LITERAL.sub(r"\1'***'", query))
    flat = " ".join(masked.split())
    return flat if len(flat) <= _MAX_QUERY_TEXT else flat[: _MAX_QUERY_TEXT - 1] + "…"


class _Index:
    """One row of :data:`advisor_sql.INDEXES`, with the comparisons the checks need."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.oid: int = row["oid"]
        self.table_oid: int = row["table_oid"]
        self.schema: str = row["schema"]
        self.table: str = row["table"]
        self.name: str = row["index"]
        self.method: str = row["method"]
        self.columns: tuple[int, ...] = tuple(row["columns"])
        self.key_columns = self.columns[: row["key_count"]]
        # Per key column: DESC and NULLS FIRST bits; an index sorted otherwise answers other
        # ORDER BY clauses, so it is neither a copy nor a prefix of this one.
        self.options: tuple[int, ...] = tuple(row["options"] or ())
        self.opclasses: tuple[int, ...] = tuple(row["opclasses"])
        self.collations: tuple[int, ...] = tuple(row["collations"])
        self.unique: bool = row["is_unique"]
        self.primary: bool = row["is_primary"]
        self.valid: bool = row["is_valid"]
        self.expressions: str | None = row["expressions"]
        self.predicate: str | None = row["predicate"]
        self.backs_constraint: bool = row["backs_constraint"]
        self.size_bytes = int(row["size_bytes"])
        self.definition: str = row["definition"]

    @property
    def identity(self) -> tuple[Any, ...]:
        """Indexes with the same identity answer exactly the same queries."""
        return (
            self.table_oid,
            self.method,
            self.columns,
            self.opclasses,
            self.collations,
            self.options,
            self.expressions,
            self.predicate,
        )

    @property
    def keep_rank(self) -> tuple[bool, bool, bool, str]:
        """Among identical indexes, the one to keep sorts first: one that enforces a constraint
        over a plain one."""
        return (not self.primary, not self.backs_constraint, not self.unique, self.name)

    def leads_with(self, columns: Iterable[int]) -> bool:
        """Whether this index can serve lookups on ``columns`` (in any order) by its leading key
        columns: a plain (non-partial, non-expression) valid btree index, or a hash index on the
        one column (other methods, GIN or BRIN, do not serve a key check's equality lookups)."""
        wanted = set(columns)
        if not self.valid or self.predicate is not None or 0 in self.key_columns[: len(wanted)]:
            return False
        if self.method != "btree" and not (self.method == "hash" and len(wanted) == 1):
            return False
        return set(self.key_columns[: len(wanted)]) == wanted

    def covers_prefix_of(self, other: _Index) -> bool:
        """Whether this index's key columns are a strict leading part of ``other``'s with the same
        operator classes, so ``other`` answers every query this one does (btree only)."""
        size = len(self.key_columns)
        return (
            self.method == other.method == "btree"
            and size < len(other.key_columns)
            and self.columns == self.key_columns  # no INCLUDE columns to lose
            and self.expressions is None
            and other.expressions is None
            and self.predicate == other.predicate
            and other.key_columns[:size] == self.key_columns
            and other.opclasses[:size] == self.opclasses
            and other.collations[:size] == self.collations
            and other.options[:size] == self.options
        )


def _duplicate_indexes(
    indexes: Sequence[_Index],
) -> tuple[list[DuplicateIndex], list[DuplicateIndex]]:
    valid = [index for index in indexes if index.valid]
    groups: dict[tuple[Any, ...], list[_Index]] = defaultdict(list)
    for index in valid:
        groups[index.identity].append(index)
    duplicates: list[DuplicateIndex] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        kept, *extra = sorted(group, key=lambda index: index.keep_rank)
        duplicates.extend(_duplicate(index, kept) for index in extra)
    # An index already reported as an identical copy is not reported again as a prefix.
    dropped = {(duplicate.schema, duplicate.table, duplicate.index) for duplicate in duplicates}
    prefixes: list[DuplicateIndex] = []
    by_table: dict[int, list[_Index]] = defaultdict(list)
    for index in valid:
        if (index.schema, index.table, index.name) not in dropped:
            by_table[index.table_oid].append(index)
    for siblings in by_table.values():
        for index in siblings:
            if index.unique or index.backs_constraint:
                continue  # it enforces uniqueness or a constraint the longer one does not
            longer = [other for other in siblings if index.covers_prefix_of(other)]
            if longer:
                prefixes.append(_duplicate(index, min(longer, key=lambda o: len(o.key_columns))))
    return duplicates, prefixes


def _duplicate(index: _Index, kept: _Index) -> DuplicateIndex:
    return DuplicateIndex(
        index.schema,
        index.table,
        index.name,
        index.size_bytes,
        index.definition,
        kept.name,
        kept.definition,
    )


def _sole_foreign_key_supports(
    foreign_keys: Sequence[Mapping[str, Any]], indexes: Sequence[_Index]
) -> set[int]:
    """Indexes that are the only support of some foreign key: never "unused" (dropping one makes
    every delete or key update of the referenced table scan the referencing one)."""
    by_table: dict[int, list[_Index]] = defaultdict(list)
    for index in indexes:
        by_table[index.table_oid].append(index)
    sole: set[int] = set()
    for key in foreign_keys:
        columns = tuple(key["columns"])
        supports = [index for index in by_table[key["table_oid"]] if index.leads_with(columns)]
        if len(supports) == 1:
            sole.add(supports[0].oid)
    return sole


def _unindexed_foreign_keys(
    foreign_keys: Sequence[Mapping[str, Any]], indexes: Sequence[_Index]
) -> list[UnindexedForeignKey]:
    by_table: dict[int, list[_Index]] = defaultdict(list)
    for index in indexes:
        by_table[index.table_oid].append(index)
    found = []
    for key in foreign_keys:
        columns = tuple(key["columns"])
        if any(index.leads_with(columns) for index in by_table[key["table_oid"]]):
            continue
        names = list(key["column_names"])
        found.append(
            UnindexedForeignKey(
                schema=key["schema"],
                table=key["table"],
                constraint=key["constraint"],
                columns=names,
                references=key["references"],
                rows=int(key["rows"]),
                suggestion=(
                    f"CREATE INDEX CONCURRENTLY ON {key['qualified_table']} "
                    f"({', '.join(key['quoted_columns'])})"
                ),
            )
        )
    return found


async def _seq_scan_tables(
    connection: AsyncConnection,
    limits: Thresholds,
    indexes: Sequence[_Index],
    unindexed: Sequence[UnindexedForeignKey],
) -> list[SeqScanTable]:
    tables = await _rows(
        connection,
        sql.SEQ_SCAN_TABLES,
        min_seq_scans=limits.min_seq_scans,
        min_rows=limits.min_rows,
        max_index_pct=limits.max_index_pct,
    )
    if not tables:
        return []
    oids = [row["table_oid"] for row in tables]
    stats: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in await _rows(connection, sql.COLUMN_STATS, table_oids=oids):
        stats[row["table_oid"]].append(row)
    by_table: dict[int, list[_Index]] = defaultdict(list)
    for index in indexes:
        by_table[index.table_oid].append(index)
    keys_by_table: dict[tuple[str, str], list[UnindexedForeignKey]] = defaultdict(list)
    for key in unindexed:
        keys_by_table[(key.schema, key.table)].append(key)
    found = []
    for row in tables:
        seq, idx, rows = int(row["seq_scan"]), int(row["idx_scan"]), int(row["rows"])
        own_indexes = by_table[row["table_oid"]]
        candidates = [
            Candidate(key.columns, "foreign_key")
            for key in keys_by_table[(row["schema"], row["table"])]
        ]
        candidates += _selective_columns(stats[row["table_oid"]], own_indexes, rows, candidates)
        found.append(
            SeqScanTable(
                schema=row["schema"],
                table=row["table"],
                rows=rows,
                size_bytes=int(row["size_bytes"]),
                seq_scans=seq,
                index_scans=idx,
                index_pct=round(100.0 * idx / max(seq + idx, 1), 1),
                avg_rows_per_seq_scan=int(row["seq_tup_read"]) // max(seq, 1),
                has_indexes=bool(own_indexes),
                candidates=candidates[:3],
            )
        )
    return found


_MIN_SELECTIVITY = 0.01
"""A column whose distinct values are fewer than this share of the rows is a poor index lead."""
_MAX_CANDIDATE_WIDTH = 256
"""Wider values (long text, documents) rarely make a useful btree index."""


def _selective_columns(
    columns: Sequence[Mapping[str, Any]],
    indexes: Sequence[_Index],
    rows: int,
    already: Sequence[Candidate],
) -> list[Candidate]:
    """Columns with many distinct values that no index starts with, most distinct first."""
    taken = {name for candidate in already for name in candidate.columns}
    scored = []
    for column in columns:
        n_distinct = float(column["n_distinct"] or 0)
        distinct = n_distinct if n_distinct > 0 else -n_distinct * rows
        if (
            column["column"] in taken
            or distinct < max(_MIN_SELECTIVITY * rows, 2)
            or (column["avg_width"] or 0) > _MAX_CANDIDATE_WIDTH
            or any(index.leads_with([column["attnum"]]) for index in indexes)
        ):
            continue
        scored.append((distinct, column["column"]))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [Candidate([name], "selective", round(distinct)) for distinct, name in scored]


async def _cache(connection: AsyncConnection, top: int) -> CacheReport:
    [database] = await _rows(connection, sql.CACHE_DATABASE)
    [totals] = await _rows(connection, sql.CACHE_TOTALS)
    return CacheReport(
        database_hit_pct=_ratio(database["hits"], database["reads"]),
        heap_hit_pct=_ratio(totals["heap_hits"], totals["heap_reads"]),
        index_hit_pct=_ratio(totals["index_hits"], totals["index_reads"]),
        tables=[
            TableCache(
                schema=row["schema"],
                table=row["table"],
                heap_hit_pct=_ratio(row["heap_hits"], row["heap_reads"]),
                index_hit_pct=_ratio(row["index_hits"], row["index_reads"]),
                heap_reads=int(row["heap_reads"]),
                index_reads=int(row["index_reads"]),
            )
            for row in await _rows(connection, sql.CACHE_TABLES, top=top)
        ],
    )


def _bloat(row: Mapping[str, Any]) -> TableBloat:
    live, dead = int(row["live_tuples"]), int(row["dead_tuples"])
    bloat_bytes = row["bloat_bytes"]
    return TableBloat(
        schema=row["schema"],
        table=row["table"],
        size_bytes=int(row["size_bytes"]),
        bloat_bytes=None if bloat_bytes is None else int(bloat_bytes),
        bloat_pct=_round(row["bloat_pct"]),
        live_tuples=live,
        dead_tuples=dead,
        dead_pct=_ratio(dead, live),
        last_vacuum=_timestamp(row["last_vacuum"]),
    )


def _ratio(part: Any, other: Any) -> float | None:
    """``part`` as a percentage of ``part + other``; ``None`` when both are zero."""
    total = float(part or 0) + float(other or 0)
    return None if total == 0 else round(100.0 * float(part or 0) / total, 2)


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")

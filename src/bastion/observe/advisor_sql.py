"""The catalog and statistics queries of ``bastion db advise`` (PostgreSQL 12 and later).

The advisor sets ``search_path = pg_catalog, pg_temp`` for its transaction and the function calls
here are qualified with ``pg_catalog.`` as well: a function of the same name planted by the
database owner in another schema (CVE-2018-1058) never runs with the advisor's privileges.

Every query only reads catalogs and the cumulative statistics views; none touches table data.
The thresholds that decide what is worth reporting live in :mod:`bastion.observe.advisor`, so
these stay plain reads that return facts.
"""

from __future__ import annotations

__all__ = [
    "BLOAT",
    "CACHE_DATABASE",
    "CACHE_TABLES",
    "CACHE_TOTALS",
    "COLUMN_STATS",
    "FOREIGN_KEYS",
    "INDEXES",
    "SEQ_SCAN_TABLES",
    "SERVER",
    "STATEMENTS_EXTENSION",
    "UNUSED_INDEXES",
    "statements_query",
]

SERVER = """
SELECT pg_catalog.current_database() AS name,
       pg_catalog.current_setting('server_version') AS server_version,
       pg_catalog.current_setting('server_version_num')::int AS version_num,
       pg_catalog.pg_database_size(pg_catalog.current_database()) AS size_bytes,
       (SELECT stats_reset FROM pg_stat_database
        WHERE datname = pg_catalog.current_database()) AS stats_reset
"""

STATEMENTS_EXTENSION = """
SELECT pg_catalog.quote_ident(n.nspname) AS schema, e.extversion AS version
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'
"""


def statements_query(schema: str, version: str) -> str:
    """Top statements of the current database by total execution time.

    ``schema`` is the extension's schema, already quoted by ``quote_ident``; the timing columns
    were renamed in version 1.8 (PostgreSQL 13).
    """
    major, _, minor = version.partition(".")
    renamed = (int(major), int(minor or 0)) >= (1, 8)
    total = "total_exec_time" if renamed else "total_time"
    mean = "mean_exec_time" if renamed else "mean_time"
    # Only the extension's schema (quoted by the server) and fixed column names are interpolated.
    return f"""
SELECT query, calls, {total} AS total_ms, {mean} AS mean_ms, rows,
       100.0 * {total} / NULLIF(SUM({total}) OVER (), 0) AS share_pct
FROM {schema}.pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database())
ORDER BY {total} DESC
LIMIT :top
"""  # noqa: S608


UNUSED_INDEXES = """
SELECT s.indexrelid AS oid, s.schemaname AS schema, s.relname AS "table",
       s.indexrelname AS "index",
       pg_catalog.pg_relation_size(s.indexrelid) AS size_bytes, s.idx_scan AS scans,
       pg_catalog.pg_get_indexdef(s.indexrelid) AS definition
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0
  AND NOT i.indisunique
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = s.indexrelid AND k.contype = 'x')
ORDER BY size_bytes DESC, s.schemaname, s.relname, s.indexrelname
"""
"""Never scanned since the statistics were reset; unique indexes and exclusion constraints are
left out: they enforce something even when no query reads them. The advisor also leaves out an
index that is the only support of a foreign key (it serves the checks of the referenced table's
deletes and key updates, however rare)."""

INDEXES = """
SELECT i.indexrelid AS oid, i.indrelid AS table_oid, n.nspname AS schema, t.relname AS "table",
       c.relname AS "index", am.amname AS method,
       i.indkey::int2[] AS columns, i.indnkeyatts AS key_count, i.indoption::int2[] AS options,
       i.indclass::oid[] AS opclasses, i.indcollation::oid[] AS collations,
       i.indisunique AS is_unique, i.indisprimary AS is_primary, i.indisvalid AS is_valid,
       pg_catalog.pg_get_expr(i.indexprs, i.indrelid) AS expressions,
       pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS predicate,
       EXISTS (SELECT 1 FROM pg_constraint k
               WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                 AND k.contype IN ('p', 'u', 'x')) AS backs_constraint,
       pg_catalog.pg_relation_size(i.indexrelid) AS size_bytes,
       pg_catalog.pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY n.nspname, t.relname, c.relname
"""

FOREIGN_KEYS = """
SELECT k.conrelid AS table_oid, n.nspname AS schema, t.relname AS "table",
       k.conname AS "constraint", k.conkey::int2[] AS columns,
       ARRAY(SELECT a.attname::text
             FROM pg_catalog.unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS column_names,
       ARRAY(SELECT pg_catalog.quote_ident(a.attname)
             FROM pg_catalog.unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS quoted_columns,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.relname)
           AS qualified_table,
       k.confrelid::regclass::text AS "references",
       GREATEST(COALESCE(st.n_live_tup, 0), t.reltuples::bigint, 0) AS rows
FROM pg_constraint k
JOIN pg_class t ON t.oid = k.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_stat_user_tables st ON st.relid = k.conrelid
WHERE k.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY n.nspname, t.relname, k.conname
"""

SEQ_SCAN_TABLES = """
SELECT st.relid AS table_oid, st.schemaname AS schema, st.relname AS "table",
       st.seq_scan, st.seq_tup_read, COALESCE(st.idx_scan, 0) AS idx_scan,
       GREATEST(st.n_live_tup, c.reltuples::bigint, 0) AS rows,
       pg_catalog.pg_table_size(st.relid) AS size_bytes
FROM pg_stat_user_tables st
JOIN pg_class c ON c.oid = st.relid
WHERE st.seq_scan >= :min_seq_scans
  AND GREATEST(st.n_live_tup, c.reltuples::bigint) >= :min_rows
  AND COALESCE(st.idx_scan, 0) * 100 < :max_index_pct * (st.seq_scan + COALESCE(st.idx_scan, 0))
ORDER BY st.seq_tup_read DESC, st.schemaname, st.relname
"""
"""Tables with enough rows that are read mostly by sequential scans."""

COLUMN_STATS = """
SELECT a.attrelid AS table_oid, a.attnum, a.attname AS "column",
       s.n_distinct, s.null_frac, s.avg_width
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
               AND s.attname = a.attname AND NOT s.inherited
WHERE a.attrelid = ANY(:table_oids) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
"""Planner statistics (from ``ANALYZE``) of the columns of the given tables."""

CACHE_DATABASE = """
SELECT blks_hit AS hits, blks_read AS reads
FROM pg_stat_database WHERE datname = pg_catalog.current_database()
"""

CACHE_TOTALS = """
SELECT COALESCE(SUM(heap_blks_hit), 0) AS heap_hits, COALESCE(SUM(heap_blks_read), 0) AS heap_reads,
       COALESCE(SUM(idx_blks_hit), 0) AS index_hits, COALESCE(SUM(idx_blks_read), 0) AS index_reads
FROM pg_statio_user_tables
"""

CACHE_TABLES = """
SELECT schemaname AS schema, relname AS "table",
       COALESCE(heap_blks_hit, 0) AS heap_hits, COALESCE(heap_blks_read, 0) AS heap_reads,
       COALESCE(idx_blks_hit, 0) AS index_hits, COALESCE(idx_blks_read, 0) AS index_reads
FROM pg_statio_user_tables
WHERE COALESCE(heap_blks_hit, 0) + COALESCE(heap_blks_read, 0)
      + COALESCE(idx_blks_hit, 0) + COALESCE(idx_blks_read, 0) > 0
ORDER BY COALESCE(heap_blks_read, 0) + COALESCE(idx_blks_read, 0) DESC,
         COALESCE(heap_blks_hit, 0) + COALESCE(idx_blks_hit, 0) DESC, schemaname, relname
LIMIT :top
"""
"""The tables that read the most blocks from outside the buffer cache."""

BLOAT = """
WITH constants AS (
    SELECT pg_catalog.current_setting('block_size')::numeric AS block_size, 24 AS page_header,
           CASE WHEN pg_catalog.version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64|arm64'
                THEN 8 ELSE 4 END AS align
),
widths AS (
    -- Per table: the expected tuple header and data width from the planner statistics.
    SELECT tbl.oid AS table_oid, tbl.reltuples, tbl.relpages AS heap_pages,
           COALESCE(toast.relpages, 0) AS toast_pages, COALESCE(toast.reltuples, 0) AS toast_tuples,
           COALESCE(substring(pg_catalog.array_to_string(tbl.reloptions, ' ')
                              FROM 'fillfactor=([0-9]+)')::smallint, 100) AS fillfactor,
           23 + CASE WHEN MAX(COALESCE(s.null_frac, 0)) > 0 THEN (7 + pg_catalog.count(*)) / 8
                     ELSE 0 END
               AS header_width,
           SUM((1 - COALESCE(s.null_frac, 0)) * COALESCE(s.avg_width, 0)) AS data_width,
           -- Columns without statistics (never analysed) or of type name make the estimate
           -- unreliable: such tables get no estimate rather than a wrong one.
           pg_catalog.bool_or(att.atttypid = 'pg_catalog.name'::regtype)
               OR pg_catalog.count(*) <> pg_catalog.count(s.attname)
               AS unreliable
    FROM pg_attribute att
    JOIN pg_class tbl ON tbl.oid = att.attrelid AND tbl.relkind IN ('r', 'm')
    JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
    LEFT JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = tbl.relname
                        AND NOT s.inherited AND s.attname = att.attname
    LEFT JOIN pg_class toast ON toast.oid = tbl.reltoastrelid
    WHERE att.attnum > 0 AND NOT att.attisdropped
      AND ns.nspname NOT IN ('pg_catalog', 'information_schema') AND ns.nspname !~ '^pg_toast'
    GROUP BY tbl.oid, tbl.reltuples, tbl.relpages, toast.relpages, toast.reltuples,
             tbl.reloptions
),
tuples AS (
    -- Aligned tuple size: item pointer + header + data, each padded to the alignment.
    SELECT w.*, k.block_size, k.page_header,
           4 + w.header_width + w.data_width + 2 * k.align
             - CASE WHEN w.header_width % k.align = 0 THEN k.align
                    ELSE w.header_width % k.align END
             - CASE WHEN pg_catalog.ceil(w.data_width)::int % k.align = 0 THEN k.align
                    ELSE pg_catalog.ceil(w.data_width)::int % k.align END AS tuple_size
    FROM widths w CROSS JOIN constants k
),
estimates AS (
    SELECT table_oid, heap_pages + toast_pages AS pages, block_size,
           CASE WHEN unreliable OR reltuples < 0 THEN NULL
                ELSE pg_catalog.ceil(reltuples / ((block_size - page_header) * fillfactor
                                       / (tuple_size * 100)))
                     + pg_catalog.ceil(toast_tuples / 4) END AS expected_pages
    FROM tuples
)
SELECT st.schemaname AS schema, st.relname AS "table",
       pg_catalog.pg_table_size(st.relid) AS size_bytes,
       CASE WHEN e.expected_pages IS NULL THEN NULL
            ELSE GREATEST(e.pages - e.expected_pages, 0) * e.block_size END AS bloat_bytes,
       CASE WHEN e.expected_pages IS NULL OR e.pages = 0 THEN NULL
            ELSE 100.0 * GREATEST(e.pages - e.expected_pages, 0) / e.pages END AS bloat_pct,
       st.n_live_tup AS live_tuples, st.n_dead_tup AS dead_tuples,
       GREATEST(st.last_vacuum, st.last_autovacuum) AS last_vacuum
FROM estimates e
JOIN pg_stat_user_tables st ON st.relid = e.table_oid
ORDER BY bloat_bytes DESC NULLS LAST, st.n_dead_tup DESC, st.schemaname, st.relname
LIMIT :top
"""
"""Statistics-based table bloat estimate (the approach of the ioguix/pgexperts bloat queries):
pages the table occupies against the pages its row count and average row width need at its
fill factor; cheap (catalogs only) but approximate, typically within ±20%."""

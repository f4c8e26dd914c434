"""``bastion db advise``: against a seeded PostgreSQL database every planted problem is reported
(unused, duplicate and prefix indexes, a sequentially scanned table and its candidate columns,
an unindexed foreign key, bloat) and nothing healthy is; URL handling and statement text."""

from __future__ import annotations

import io
import socket

import asyncpg
import pytest
from rich.console import Console

from advisor_seed import SEQ_SCANS, asyncpg_dsn, seed
from bastion.observe.advisor import (
    AdvisorReport,
    AdvisorUrlError,
    BloatReport,
    CacheReport,
    DatabaseInfo,
    SeqScanTable,
    Statements,
    TableBloat,
    Thresholds,
    UnusedIndex,
    _redacted,
    advise,
    normalise_url,
)
from bastion.observe.advisor_text import render_text
from bastion.store.errors import StoreError

# The seeded tables are small; the default floor (10,000 rows) is kept, orders has 15,000.
THRESHOLDS = Thresholds(top=20)


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def seeded(postgres_database_url: str) -> str:
    await seed(postgres_database_url)
    return postgres_database_url


@pytest.fixture
async def report(seeded: str) -> AdvisorReport:
    return await advise(seeded, thresholds=THRESHOLDS)


@pytest.mark.postgres
async def test_unused_index_and_missing_index_are_both_reported(report: AdvisorReport) -> None:
    unused = {(index.table, index.index) for index in report.unused_indexes}
    assert ("events", "events_kind_idx") in unused
    # Used, unique and primary-key indexes are never "unused".
    assert ("customers", "customers_name_idx") not in unused
    assert ("events", "events_code_key") not in unused
    assert not any(name.endswith("_pkey") for _, name in unused)

    [orders] = [table for table in report.seq_scan_tables if table.table == "orders"]
    assert orders.seq_scans >= SEQ_SCANS
    assert orders.index_scans < orders.seq_scans
    assert orders.rows >= 10_000
    assert orders.has_indexes  # its primary key, which the scans cannot use
    candidates = {tuple(c.columns): c.reason for c in orders.candidates}
    assert candidates[("customer_id",)] == "foreign_key"
    assert candidates[("reference",)] == "selective"
    assert ("id",) not in candidates  # already leads the primary key

    [key] = report.unindexed_foreign_keys
    assert (key.table, key.constraint, key.columns) == (
        "orders",
        "orders_customer_id_fkey",
        ["customer_id"],
    )
    assert key.references == "public.customers"  # always schema-qualified
    assert key.suggestion == "CREATE INDEX CONCURRENTLY ON public.orders (customer_id)"


@pytest.mark.postgres
async def test_small_or_index_served_tables_are_not_reported(report: AdvisorReport) -> None:
    assert {table.table for table in report.seq_scan_tables} == {"orders"}


@pytest.mark.postgres
async def test_duplicate_and_prefix_indexes(report: AdvisorReport) -> None:
    [duplicate] = report.duplicate_indexes
    # The copy sorts after its twin by name: the twin is kept, the copy is the one to drop.
    assert (duplicate.index, duplicate.duplicate_of) == ("events_kind_idx", "events_kind_copy_idx")
    assert duplicate.definition.startswith("CREATE INDEX events_kind_idx ON public.events")
    # The kept single-column index is itself covered by (kind, at); the dropped copy is not
    # reported twice, and the unique index on code is never called redundant.
    assert [(p.index, p.duplicate_of) for p in report.prefix_indexes] == [
        ("events_kind_copy_idx", "events_kind_at_idx")
    ]


@pytest.mark.postgres
async def test_a_higher_floor_hides_the_table(seeded: str) -> None:
    report = await advise(seeded, thresholds=Thresholds(min_rows=1_000_000))
    assert report.seq_scan_tables == []
    assert report.thresholds.min_rows == 1_000_000


@pytest.mark.postgres
async def test_cache_and_bloat(report: AdvisorReport) -> None:
    cache = report.cache
    for value in (cache.database_hit_pct, cache.heap_hit_pct, cache.index_hit_pct):
        assert value is not None
        assert 0 <= value <= 100
    assert "orders" in {table.table for table in cache.tables}

    bloat = {table.table: table for table in report.bloat.tables}
    orders = bloat["orders"]
    assert orders.dead_tuples == 5000  # the deleted quarter, never vacuumed
    assert orders.live_tuples == 15000
    assert orders.dead_pct == 25.0
    assert orders.bloat_bytes is not None
    assert orders.bloat_bytes > 0
    assert orders.bloat_pct is not None
    assert 10 < orders.bloat_pct < 40
    assert bloat["customers"].dead_tuples == 0
    assert "statistics-based estimate" in report.bloat.method


@pytest.mark.postgres
async def test_report_header_and_json_document(report: AdvisorReport, seeded: str) -> None:
    document = report.to_dict()
    assert document["schema_version"] == 1
    assert document["database"]["name"] == seeded.rsplit("/", 1)[1]
    assert document["database"]["server_version"][:2].isdigit()
    assert document["thresholds"] == {
        "top": 20,
        "min_rows": 10_000,
        "min_seq_scans": 10,
        "max_index_pct": 95,
    }


_ORDERED = """
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE t (a int, b int);
CREATE INDEX t_ab ON t (a, b);
CREATE INDEX t_ab_desc ON t (a, b DESC);
CREATE INDEX t_ab_nulls ON t (a, b NULLS FIRST);
CREATE INDEX t_ab_twin ON t (a, b);
CREATE INDEX t_adesc ON t (a DESC);
CREATE INDEX t_adesc_b ON t (a DESC, b);
CREATE TABLE brin_child (p int REFERENCES parent (id));
CREATE INDEX brin_child_p ON brin_child USING brin (p);
CREATE TABLE hash_child (p int REFERENCES parent (id));
CREATE INDEX hash_child_p ON hash_child USING hash (p);
CREATE TABLE btree_child (p int REFERENCES parent (id), q int);
CREATE INDEX btree_child_p ON btree_child (p);
CREATE INDEX btree_child_q ON btree_child (q);
CREATE TABLE twice_child (p int REFERENCES parent (id));
CREATE INDEX twice_child_p ON twice_child (p);
CREATE INDEX twice_child_p_hash ON twice_child USING hash (p);
"""


@pytest.mark.postgres
async def test_sort_order_method_and_foreign_key_support(postgres_database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(postgres_database_url))
    try:
        await connection.execute(_ORDERED)
    finally:
        await connection.close()
    report = await advise(postgres_database_url, thresholds=THRESHOLDS)
    # Only the exact twin is a copy; other sort directions or NULLS orders answer other queries.
    assert [(d.index, d.duplicate_of) for d in report.duplicate_indexes] == [("t_ab_twin", "t_ab")]
    # (a DESC) is a prefix of (a DESC, b) only; never of (a, b) or its variants.
    assert [(p.index, p.duplicate_of) for p in report.prefix_indexes] == [("t_adesc", "t_adesc_b")]
    # A BRIN index does not serve the key checks; a hash index on the one column does.
    assert [key.table for key in report.unindexed_foreign_keys] == ["brin_child"]
    # The only support of a foreign key is never "unused"; one of two supports may be.
    unused = {index.index for index in report.unused_indexes}
    assert "btree_child_p" not in unused
    assert "hash_child_p" not in unused
    assert {"btree_child_q", "brin_child_p", "twice_child_p", "twice_child_p_hash"} <= unused


_PLANTED = """
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'planted quote_ident ran';
    RETURN 'PLANTED-' || $1;
END $$;
CREATE FUNCTION public.unnest(int2[]) RETURNS SETOF int2 LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'planted unnest ran';
    RETURN;
END $$;
CREATE FUNCTION public.pg_relation_size(regclass) RETURNS bigint LANGUAGE sql
    AS 'SELECT -424242::bigint';
"""


@pytest.mark.postgres
async def test_functions_planted_by_the_owner_never_run(seeded: str) -> None:
    """CVE-2018-1058: exact-signature look-alikes in ``public`` would win overload resolution
    over the ``pg_catalog`` functions; the advisor's report must come from the real ones."""
    connection = await asyncpg.connect(asyncpg_dsn(seeded))
    try:
        await connection.execute(_PLANTED)
    finally:
        await connection.close()
    report = await advise(seeded, thresholds=THRESHOLDS)
    document = str(report.to_dict())
    assert "PLANTED" not in document
    assert "-424242" not in document
    [key] = report.unindexed_foreign_keys
    assert key.columns == ["customer_id"]
    assert key.suggestion == "CREATE INDEX CONCURRENTLY ON public.orders (customer_id)"
    assert all(index.size_bytes >= 0 for index in report.unused_indexes)


@pytest.mark.postgres
async def test_statements_section_follows_the_extension(postgres_database_url: str) -> None:
    report = await advise(postgres_database_url)
    assert not report.statements.available
    assert report.statements.reason is not None
    assert "not installed in this database" in report.statements.reason
    assert "shared_preload_libraries" in report.statements.reason

    connection = await asyncpg.connect(asyncpg_dsn(postgres_database_url))
    try:
        preload = await connection.fetchval("SHOW shared_preload_libraries")
        await connection.execute("CREATE EXTENSION pg_stat_statements")
        for _ in range(3):
            await connection.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", "x")
    finally:
        await connection.close()
    statements = (await advise(postgres_database_url, thresholds=Thresholds(top=100))).statements
    if "pg_stat_statements" in preload:
        assert statements.available
        assert statements.reason is None
        queries = [item.query for item in statements.items]
        assert "SELECT count(*) FROM pg_class WHERE relname = $1" in queries
        assert all(item.calls >= 1 and item.total_ms >= 0 for item in statements.items)
    else:
        # Installed but not preloaded: the report says so instead of failing.
        assert not statements.available
        assert statements.reason is not None
        assert "installed but cannot be read" in statements.reason
        assert "shared_preload_libraries" in statements.reason


@pytest.mark.postgres
async def test_statements_timeout_leaves_the_rest_of_the_report(seeded: str) -> None:
    """A lock held on the statistics view makes the statements query give up: the section says
    so (not "not preloaded"), and every other section is still reported."""
    holder = await asyncpg.connect(asyncpg_dsn(seeded))
    try:
        await holder.execute("CREATE EXTENSION pg_stat_statements")
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE pg_stat_statements IN ACCESS EXCLUSIVE MODE")
        report = await advise(seeded, thresholds=THRESHOLDS, query_timeout=1)
        await transaction.rollback()
    finally:
        await holder.close()
    assert not report.statements.available
    assert report.statements.reason is not None
    assert "did not finish within the query timeout" in report.statements.reason
    assert "shared_preload_libraries" not in report.statements.reason
    assert [key.table for key in report.unindexed_foreign_keys] == ["orders"]
    assert "orders" in {table.table for table in report.bloat.tables}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@db:5432/app", "postgresql+asyncpg://u@db:5432/app"),
        ("postgres://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("  postgresql://u@db/app\n", "postgresql+asyncpg://u@db/app"),
        ("postgresql://u@db/app?sslmode=require", "postgresql+asyncpg://u@db/app?ssl=require"),
        ("postgresql://u@db/app?ssl=verify-full", "postgresql+asyncpg://u@db/app?ssl=verify-full"),
        (
            "postgresql://u@/app?host=/run/postgresql",
            "postgresql+asyncpg://u@/app?host=%2Frun%2Fpostgresql",
        ),
        ("postgresql://u@/app?host=db:6432", "postgresql+asyncpg://u@/app?host=db%3A6432"),
        (
            "postgresql://u@/app?host=[::1]:6432",
            "postgresql+asyncpg://u@/app?host=%5B%3A%3A1%5D%3A6432",
        ),
    ],
)
def test_accepted_urls_are_normalised(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite+aiosqlite:///./bastion.db", "not sqlite+aiosqlite://"),
        ("sqlite:///x.db", "not sqlite://"),
        ("mysql://root:topsecret@db/app", "not mysql://"),
        ("postgresql+psycopg://u:topsecret@db/app", "not postgresql+psycopg://"),
        ("just some words", "not a database URL"),
        ("", "not a database URL"),
        ("postgresql://u:topsecret@db:port/app", "not a database URL"),
        ("postgresql:///app", "names no host"),
        ("postgresql://u:topsecret@db:70000/app", "port is out of range"),
        ("postgresql://u:topsecret@db/app?bogus=1", "unsupported URL parameter 'bogus'"),
        ("postgresql://u@db/app?port=abc", "unsupported URL parameter 'port'"),
        ("postgresql://u:topsecret@db/app?ssl=bogus", "'ssl' must be one of"),
        ("postgresql://u@db/app?ssl=require&sslmode=disable", "not both"),
        ("postgresql://u@db/app?sslmode=require&sslmode=disable", "more than once"),
        ("postgresql://u@/app?host=a&host=b", "more than once"),
        ("postgresql://u@/app?host=db:x1", "not a host[:port] list"),
        ("postgresql://u@/app?host=[::1]:70000", "not 1-65535"),
        ("postgresql://u@/app?host=", "names no host"),
        ("postgresql://u@/app?host=a,,b", "not a host[:port] list"),
    ],
)
def test_other_urls_are_refused_without_echoing_them(url: str, message: str) -> None:
    with pytest.raises(AdvisorUrlError) as caught:
        normalise_url(url)
    assert message in str(caught.value)
    assert "topsecret" not in str(caught.value)


async def test_unreachable_server_is_a_store_error(closed_port: int) -> None:
    with pytest.raises(StoreError) as caught:
        await advise(f"postgresql://u:topsecret@127.0.0.1:{closed_port}/app", query_timeout=2)
    assert "topsecret" not in str(caught.value)


_WITHHELD = " … (text withheld: may hold a password)"


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        # Role, user mapping, subscription and server statements show only their command.
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE" + _WITHHELD),
        ("create user x with password 'a''b c'", "CREATE USER" + _WITHHELD),
        ("ALTER USER x ENCRYPTED PASSWORD 'md5abc' VALID UNTIL 'x'", "ALTER USER" + _WITHHELD),
        ("alter role app password E'hun\\'ter2'", "ALTER ROLE" + _WITHHELD),
        ("ALTER ROLE app PASSWORD U&'hunter\\0032'", "ALTER ROLE" + _WITHHELD),
        ("ALTER ROLE app PASSWORD $pw$hunter2$pw$", "ALTER ROLE" + _WITHHELD),
        ("  /* app */ -- note\n CREATE ROLE r LOGIN PASSWORD $$x$$", "CREATE ROLE" + _WITHHELD),
        (
            "CREATE SUBSCRIPTION s CONNECTION 'host=db password=hunter2' PUBLICATION p",
            "CREATE SUBSCRIPTION" + _WITHHELD,
        ),
        ("ALTER SUBSCRIPTION s CONNECTION 'password=hunter2'", "ALTER SUBSCRIPTION" + _WITHHELD),
        (
            "CREATE USER MAPPING FOR app SERVER f OPTIONS (user 'a', password 'hunter2')",
            "CREATE USER MAPPING" + _WITHHELD,
        ),
        (
            "alter  user\nmapping for app server f options (set password 'hunter2')",
            "ALTER USER MAPPING" + _WITHHELD,
        ),
        ("CREATE GROUP g WITH PASSWORD 'hunter2'", "CREATE GROUP" + _WITHHELD),
        # Elsewhere the literal after PASSWORD and password= of connection strings are masked.
        ("DO $$ ALTER ROLE a PASSWORD 'hunter2' $$", "DO $$ ALTER ROLE a PASSWORD '***' $$"),
        ("SELECT f(password E'hun\\'ter2')", "SELECT f(password '***')"),
        ("SELECT f(PASSWORD $t$hunter2$t$)", "SELECT f(PASSWORD '***')"),
        (
            "SELECT dblink_connect('host=db password=hunter2 user=a')",
            "SELECT dblink_connect('host=db password=*** user=a')",
        ),
        (
            "SELECT dblink('dbname=x password = hunter2', 'SELECT 1')",
            "SELECT dblink('dbname=x password = *** 'SELECT 1')",
        ),
        ("SELECT password FROM users WHERE id = $1", "SELECT password FROM users WHERE id = $1"),
        ("SELECT\n  a,\n  b\nFROM t", "SELECT a, b FROM t"),
    ],
)
def test_statement_text_masks_password_literals(query: str, shown: str) -> None:
    assert _redacted(query) == shown
    assert "hunter" not in _redacted(query)


def test_long_statement_text_is_cut() -> None:
    shown = _redacted("SELECT " + "x, " * 2000 + "y")
    assert len(shown) == 2000
    assert shown.endswith("…")


def test_text_report_shows_names_as_written_and_missing_values() -> None:
    odd = "[bold]t[/bold]"
    report = AdvisorReport(
        generated_at="2026-01-01T00:00:00+00:00",
        database=DatabaseInfo("db[1]", "15.0", 5 * 1024**3, None),
        thresholds=Thresholds(),
        statements=Statements(False, "pg_stat_statements is not installed [here]"),
        unused_indexes=[UnusedIndex("public", odd, "i[x]", 10, "CREATE INDEX i ON t (a[1])")],
        duplicate_indexes=[],
        prefix_indexes=[],
        seq_scan_tables=[
            SeqScanTable("public", "t", 20_000, 8192, 50, 0, 0.0, 20_000, False, candidates=[])
        ],
        unindexed_foreign_keys=[],
        cache=CacheReport(None, None, None, []),
        bloat=BloatReport(
            "statistics-based estimate",
            [TableBloat("public", "t", 8192, None, None, 0, 0, None, None)],
        ),
    )
    buffer = io.StringIO()
    render_text(report, Console(file=buffer, width=200, color_system=None))
    out = buffer.getvalue()
    assert "Database db[1]: PostgreSQL 15.0, 5.0 GiB" in out
    assert "the database was created" in out
    assert "pg_stat_statements is not installed [here]" in out
    assert "public.[bold]t[/bold]" in out
    assert "CREATE INDEX i ON t (a[1])" in out
    assert "see the statements filtering this table" in out
    assert "database n/a, tables n/a, indexes n/a" in out
    assert "never" in out

"""A PostgreSQL schema with the problems ``bastion db advise`` must find, and the workload that
makes the statistics show them.

- ``events.events_kind_idx``: never used; ``events_kind_copy_idx`` is an identical copy and
  ``events_kind_at_idx`` starts with the same column (prefix-redundant);
- ``orders``: 20,000 rows read by sequential scans on ``reference`` (no index), with a foreign key
  ``customer_id`` that has no index, and a quarter of its rows deleted (dead tuples, bloat);
  autovacuum is off for it so the counts stay as seeded;
- ``customers.customers_name_idx``: used (scanned), so never reported as unused;
- ``customer_notes.customer_id``: a foreign key with an index, so never reported;
- ``events.events_code_key``: a unique index, never used but never reported as unused.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["SEQUENTIAL_QUERY", "SEQ_SCANS", "asyncpg_dsn", "seed"]

SEQ_SCANS = 30
SEQUENTIAL_QUERY = "SELECT id FROM orders WHERE reference = $1"

_SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE INDEX customers_name_idx ON customers (name);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    reference text NOT NULL,
    status text NOT NULL
) WITH (autovacuum_enabled = false);
CREATE TABLE customer_notes (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    body text NOT NULL
);
CREATE INDEX customer_notes_customer_id_idx ON customer_notes (customer_id);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    kind text NOT NULL,
    code text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_kind_idx ON events (kind);
CREATE INDEX events_kind_copy_idx ON events (kind);
CREATE INDEX events_kind_at_idx ON events (kind, at);
CREATE UNIQUE INDEX events_code_key ON events (code);
INSERT INTO customers SELECT g, 'customer-' || g FROM generate_series(1, 500) AS g;
INSERT INTO orders
    SELECT g, 1 + g % 500, 'ref-' || g, (ARRAY['new', 'paid', 'sent'])[1 + g % 3]
    FROM generate_series(1, 20000) AS g;
INSERT INTO customer_notes SELECT g, g, 'note' FROM generate_series(1, 100) AS g;
INSERT INTO events SELECT g, 'kind-' || g % 7, 'code-' || g FROM generate_series(1, 1000) AS g;
DELETE FROM orders WHERE id % 4 = 0;
ANALYZE;
"""


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def seed(url: str) -> None:
    """Create the schema, run the workload and wait until the statistics count it."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(_SCHEMA)
        for number in range(SEQ_SCANS):
            await connection.fetch(SEQUENTIAL_QUERY, f"ref-{number}")
        await connection.execute("SET enable_seqscan = off")
        await connection.fetch("SELECT id FROM customers WHERE name = $1", "customer-7")
        # Statistics reach the shared counters when a backend reports them (at most once a
        # second unless forced); the next statement's end forces this backend's report.
        await connection.execute("SELECT pg_stat_force_next_flush()")
        await connection.execute("SELECT 1")
    finally:
        await connection.close()
    await _wait_for_counters(url)


async def _wait_for_counters(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        deadline = time.monotonic() + 10
        while True:
            counts = await connection.fetchrow(
                """SELECT (SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'orders')
                          AS seq_scan,
                          (SELECT idx_scan FROM pg_stat_user_indexes
                           WHERE indexrelname = 'customers_name_idx') AS idx_scan"""
            )
            assert counts is not None
            if counts["seq_scan"] >= SEQ_SCANS and counts["idx_scan"] >= 1:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"statistics never showed the workload: {dict(counts)}")
            await asyncio.sleep(0.05)
    finally:
        await connection.close()

"""The audit log under load: the audited gateway against the same gateway without audit.

``bastion serve`` in front of the demo upstream, with inspection in ``monitor`` mode and every
request carrying an SQL injection in its query string: each request is detected, forwarded
(200 from the upstream) and emits one ``inspect.detected`` event. With ``[audit] enabled`` the
event is committed to the hash-chained log before the response completes (group commit, the
default ``loss_window = 0``); without, it is one log line. Everything else is identical, so the
ratio is what the durable audit log costs a gateway whose every request is audited.

:func:`bench.run.audit_scenario` starts the servers and runs wrk; this module holds what
defines the scenario: the configurations, the request, the rows and the target.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from bench.apps import bastion_toml
from bench.report import ThroughputScenario, ThroughputTarget

__all__ = [
    "ATTACK_QUERY",
    "AUDIT_MIN_RATIO",
    "audited_gateway_rows",
    "audited_gateway_scenario",
    "audited_toml",
    "audited_url",
    "recorded_events",
]

AUDIT_MIN_RATIO = 0.9
"""The audited gateway must keep this share of the unaudited gateway's requests per second."""
ATTACK_QUERY = {"q": "1' union select password from users--"}
"""Detected by inspection at paranoia 1 (SQL injection) on every request."""


def audited_toml(database: Path, *, audit: bool) -> str:
    """The gateway configuration of :func:`bench.apps.bastion_toml` (access log on, global rate
    limit in shadow mode), inspection in monitor mode, and the audit log on or off."""
    return (
        bastion_toml(database)
        + '\n[inspect]\nmode = "monitor"\n'
        + f"\n[audit]\nenabled = {'true' if audit else 'false'}\n"
    )


def audited_url(hello_url: str) -> str:
    """``hello_url`` with the attack in its query string."""
    return f"{hello_url}?{urllib.parse.urlencode(ATTACK_QUERY)}"


def audited_gateway_rows() -> list[ThroughputTarget]:
    """The two rows: the baseline without audit first."""
    return [
        ThroughputTarget(
            "audit_off",
            "gateway, audit off",
            note="`[audit] enabled = false`: each `inspect.detected` event is a log line "
            "(stdout to /dev/null)",
        ),
        ThroughputTarget(
            "audit_on",
            "gateway, audit on",
            min_ratio=AUDIT_MIN_RATIO,
            note="the default `[audit]`: each event committed to `audit_events` (SQLite, hash "
            "chain with HMAC, group commit) before its response completes",
        ),
    ]


def audited_gateway_scenario(
    rows: list[ThroughputTarget], commands: list[str], *, server_cpu: str, load_cpu: str
) -> ThroughputScenario:
    """The report section of the measured ``rows``."""
    return ThroughputScenario(
        key="audit",
        title="Audited gateway",
        intro=(
            f"The demo upstream and `bastion serve` share CPU {server_cpu}; wrk (1 thread, 64 "
            f"connections) runs on CPU {load_cpu}. Every request is `GET /hello` with an SQL "
            "injection in its query string: inspection in monitor mode detects it, forwards it "
            "and emits one `inspect.detected` audit event, so every response waits for its "
            "event. After the runs, the audited gateway's `audit_events` is checked to hold an "
            "event for every request wrk sent. Ratios are to the same gateway with audit off."
        ),
        baseline="audit_off",
        targets=rows,
        commands=commands,
    )


def recorded_events(database: Path) -> int:
    """Rows of ``audit_events`` in the SQLite file ``database``."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        (count,) = connection.execute("SELECT count(*) FROM audit_events").fetchone()
    finally:
        connection.close()
    return int(count)

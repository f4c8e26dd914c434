"""Plumbing of the audit-log throughput scenario: a tiny run against SQLite and the test
PostgreSQL produces every figure, survives the JSON round trip and renders its section and
targets. Nothing here asserts timings."""

from __future__ import annotations

import json

import pytest

from bench import audit_log, report, run


@pytest.mark.postgres
async def test_audit_log_scenario_measures_renders_and_round_trips(postgres_url: str) -> None:
    result = await audit_log.run_audit_log(postgres_url, events=300, runs=1)
    assert [r.backend for r in result.runs] == ["sqlite", "postgresql"]
    for backend_run in result.runs:
        assert backend_run.events == 300
        assert backend_run.events_per_s > 0
        assert 1 <= backend_run.transactions <= 300
        assert backend_run.cpu_us_per_event > 0
        assert backend_run.emit_p50_ms <= backend_run.emit_p99_ms
    result.postgres = "test server"
    back = audit_log.AuditLogResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result
    page = report.Report(date="d", machine={}, versions={}, parameters={}, audit_log=back)
    text = report.render(report.Report.from_json(page.to_json()))
    assert "Audit log throughput" in text
    assert "events/s committed to SQLite" in text
    assert "events/s committed to PostgreSQL" in text
    goals = audit_log.audit_log_goals(back)
    assert [row[2] for row in goals] == ["≥ 20,000", "≥ 20,000"]
    assert "audit_log" in run.SCENARIOS

"""The metrics contract as operators scrape it: every series of DESIGN.md §8 from a real
``bastion serve --workers 2``, fed by real traffic and merged across the workers."""

from __future__ import annotations

import httpx
import orjson
import pytest

from e2e.processes import Processes, free_port
from problem_assertions import assert_problem

pytestmark = pytest.mark.e2e

CONTRACT = (
    "bastion_http_requests_total",
    "bastion_http_request_duration_seconds",
    "bastion_inflight_requests",
    "bastion_shed_total",
    "bastion_upstream_errors_total",
    "bastion_auth_attempts_total",
    "bastion_ratelimit_decisions_total",
    "bastion_inspect_blocked_total",
    "bastion_cache_requests_total",
    "bastion_audit_events_total",
    "bastion_store_errors_total",
)
"""The series names DESIGN.md §8 fixes."""

_SQLI = "1' OR '1'='1' UNION SELECT password FROM users--"


def _samples(text: str) -> dict[str, list[str]]:
    """Sample lines of an exposition by metric family name."""
    families: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for suffix in ("_bucket", "_count", "_sum", "_created"):
            if name.endswith(suffix) and not name.endswith("_total" + suffix):
                name = name.removesuffix(suffix)
                break
        families.setdefault(name, []).append(line)
    return families


def test_every_contract_series_from_two_workers(processes: Processes) -> None:
    demo = processes.demo()
    nothing_listens = free_port()
    redis_down = free_port()
    gateway = processes.bastion(
        "--workers",
        "2",
        config=f"""
[store]
redis_url = "redis://127.0.0.1:{redis_down}/0"

[[routes]]
name = "gone"
prefix = "/gone"
upstream = "http://127.0.0.1:{nothing_listens}"

[[routes]]
name = "demo"
prefix = "/"
upstream = "{demo.url}"

[cache.http]
enabled = true
""",
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(20):
            assert client.get("/hello").status_code == 200
        assert_problem(client.get("/gone/items/7"), 502, "upstream_unavailable")
        login = client.post(
            "/_bastion/auth/login", json={"username": "nobody", "password": "wrong password"}
        )
        assert login.status_code == 401
        assert login.json()["code"] == "invalid_credentials"
        blocked = client.get("/hello", params={"q": _SQLI})
        assert blocked.status_code == 403
        assert blocked.json()["code"] == "request_blocked"
        text = client.get("/_bastion/metrics").text
    families = _samples(text)
    missing = [name for name in CONTRACT if name not in families]
    assert not missing, f"missing series {missing} in:\n{text}"

    def sample(name: str, *labels: str) -> float:
        lines = [line for line in families[name] if all(label in line for label in labels)]
        assert lines, (name, labels, families[name])
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    # Counts from both workers are merged into one exposition.
    assert sample("bastion_http_requests_total", 'route="demo"', 'status="200"') >= 20
    assert sample("bastion_upstream_errors_total", 'route="gone"', 'kind="connect"') == 1
    assert sample("bastion_auth_attempts_total", 'method="password"', 'result="failure"') == 1
    assert sample("bastion_inspect_blocked_total", 'category="sqli"') == 1
    assert sample("bastion_ratelimit_decisions_total", 'policy="global"') >= 20
    # Redis is down: the rate limiter fell back to local counting and said so.
    assert sample("bastion_store_errors_total", 'store="redis"', 'op="ratelimit"') >= 1
    assert sample("bastion_audit_events_total", 'kind="auth.login.failed"') == 1
    # Sub-millisecond resolution at the low end of the latency histogram.
    assert sample("bastion_http_request_duration_seconds", 'le="0.0001"') >= 0
    assert sample("bastion_http_request_duration_seconds", 'le="0.0005"') >= 0
    # Labels never carry raw paths.
    assert "/gone/items/7" not in text
    assert "/hello" not in text


def test_traced_gateway_logs_and_exports_the_same_trace(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion(
        "--workers",
        "2",
        config=f"""
[tracing]
enabled = true
exporter = "console"

[[routes]]
name = "demo"
prefix = "/"
upstream = "{demo.url}"
""",
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for index in range(4):
            response = client.get("/hello", headers={"X-Request-ID": f"traced-{index}"})
            assert response.status_code == 200
    output = gateway.stop()  # a graceful stop flushes the spans still queued
    records = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = {r["request_id"]: r for r in records if r.get("event") == "request"}
    spans = [r for r in records if "context" in r and "kind" in r]
    servers = {
        dict(s["attributes"]).get("bastion.request_id"): s
        for s in spans
        if s["kind"] == "SpanKind.SERVER"
    }
    for index in range(4):
        line = access[f"traced-{index}"]
        span = servers[f"traced-{index}"]
        assert span["name"] == "GET /**"
        assert span["context"]["trace_id"] == "0x" + line["trace_id"]
        assert span["context"]["span_id"] == "0x" + line["span_id"]
        clients = [
            s
            for s in spans
            if s["kind"] == "SpanKind.CLIENT" and s["parent_id"] == "0x" + line["span_id"]
        ]
        assert len(clients) == 1

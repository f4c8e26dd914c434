"""Built-in probes and the error stage."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.observe.config import MetricsConfig
from bastion.pipeline.probes import ProbeStage
from bastion.settings import Settings
from problem_assertions import assert_problem
from stage_harness import around, make_deps


def with_peer(app: ASGIApp, peer: str) -> ASGIApp:
    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        scope["client"] = (peer, 5555)
        await app(scope, receive, send)

    return call


async def terminal(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/raise-bastion":
        raise BastionError("upstream_timeout", "slow upstream")
    if path == "/raise-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-body failure")
    if path == "/raise":
        raise KeyError("db password is hunter2")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"terminal"})


def probes(
    checks: dict[str, dict[str, Any]] | None = None,
    config: MetricsConfig | None = None,
    peer: str = "127.0.0.1",
) -> TestClient:
    deps = make_deps(Settings(metrics=config or MetricsConfig()))

    async def readiness() -> dict[str, dict[str, Any]]:
        return checks if checks is not None else {"database": {"status": "ok"}}

    app = around(
        lambda a, d: ProbeStage(a, config=config or MetricsConfig(), deps=d, readiness=readiness),
        terminal,
        deps,
    )
    return TestClient(with_peer(app, peer))


def test_health() -> None:
    response = probes().get("/_bastion/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_ok_and_failing() -> None:
    ok = probes({"database": {"status": "ok", "latency_ms": 1.0}}).get("/_bastion/ready")
    assert ok.status_code == 200
    assert ok.json()["checks"]["database"]["status"] == "ok"
    failing = probes({"database": {"status": "ok"}, "redis": {"status": "error"}})
    data = assert_problem(failing.get("/_bastion/ready"), 503, "not_ready")
    assert data["checks"]["redis"]["status"] == "error"
    assert "redis" in data["detail"]


def test_metrics_loopback_only_by_default() -> None:
    response = probes().get("/_bastion/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "bastion_http_requests_total" in response.text
    assert_problem(probes(peer="198.51.100.7").get("/_bastion/metrics"), 403, "forbidden")


def test_metrics_allowlist_configurable() -> None:
    config = MetricsConfig(allow=["198.51.100.0/24"])
    assert probes(config=config, peer="198.51.100.7").get("/_bastion/metrics").status_code == 200
    assert probes(config=config, peer="127.0.0.1").get("/_bastion/metrics").status_code == 403


def test_metrics_disabled_falls_through() -> None:
    response = probes(config=MetricsConfig(enabled=False)).get("/_bastion/metrics")
    assert response.text == "terminal"


def test_probe_methods() -> None:
    response = probes().post("/_bastion/health")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"
    head = probes().head("/_bastion/health")
    assert head.status_code == 200
    assert head.content == b""


def test_bastion_error_rendered() -> None:
    assert_problem(probes().get("/raise-bastion"), 504, "upstream_timeout")


def test_unexpected_error_is_opaque_500() -> None:
    response = probes().get("/raise")
    data = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert data["detail"] == "Internal server error"


def test_error_after_start_does_not_send_second_response() -> None:
    # The response had begun: no problem response follows; the body is cut short and the server
    # closes the connection.
    response = probes().get("/raise-after-start")
    assert response.status_code == 200
    assert response.content == b""


def test_requests_are_counted() -> None:
    deps = make_deps()

    async def readiness() -> dict[str, dict[str, Any]]:
        return {}

    app = around(
        lambda a, d: ProbeStage(a, config=MetricsConfig(), deps=d, readiness=readiness),
        terminal,
        deps,
    )
    client = TestClient(with_peer(app, "127.0.0.1"))
    client.get("/x")
    client.get("/raise")
    text = deps.metrics.exposition().decode()
    assert 'bastion_http_requests_total{method="GET",route="_none",status="200"} 1.0' in text
    assert 'bastion_http_requests_total{method="GET",route="_none",status="500"} 1.0' in text
    assert "bastion_http_request_duration_seconds_bucket" in text


async def test_inflight_gauge_counts_requests_in_progress() -> None:
    import asyncio

    deps = make_deps()
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = around(lambda a, d: a, slow, deps)

    async def one() -> None:
        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            return None

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [],
            "state": {},
            "query_string": b"",
            "client": ("127.0.0.1", 1),
        }
        await app(scope, receive, send)

    def gauge() -> float:
        value = deps.metrics.registry.get_sample_value("bastion_inflight_requests")
        assert value is not None
        return value

    tasks = [asyncio.create_task(one()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert gauge() == 3
    release.set()
    await asyncio.gather(*tasks)
    assert gauge() == 0

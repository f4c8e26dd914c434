"""`bastion serve` as operators run it: workers, probes, metrics, logs, trust, refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from e2e.processes import Processes
from problem_assertions import assert_problem

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def test_two_workers_share_the_socket_and_aggregate_metrics(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url, "--workers", "2")
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(40):
            assert client.get("/hello").status_code == 200
        text = client.get("/_bastion/metrics").text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("bastion_http_requests_total{")
        and 'route="default"' in line
        and 'status="200"' in line
        and 'method="GET"' in line
    )
    # Every worker's counts are in the one exposition (plus the probes that ran meanwhile).
    assert float(line.rsplit(" ", 1)[1]) >= 40
    assert "bastion_inflight_requests" in text


def test_probes_and_ready_checks(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url)
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/_bastion/health").json() == {"status": "ok"}
        ready = client.get("/_bastion/ready").json()
        assert ready["status"] == "ok"
        assert ready["checks"]["database"]["status"] == "ok"
        assert_problem(client.get("/_bastion/unknown"), 404, "not_found")


def test_spoofed_forwarded_for_is_not_believed(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url)
    with httpx.Client(base_url=gateway.url) as client:
        seen = client.get(
            "/headers", headers={"X-Forwarded-For": "203.0.113.9", "X-Bastion-User": "admin"}
        ).json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "x-bastion-user" not in headers
    # The access log names the real peer (lines are buffered until flushed, at the latest on
    # shut-down).
    access = [
        orjson.loads(line)
        for line in gateway.stop().splitlines()
        if line.startswith("{") and '"bastion.access"' in line
    ]
    assert any(r["path"] == "/headers" and r["client_ip"] == "127.0.0.1" for r in access)


def test_trusted_proxy_is_believed(processes: Processes) -> None:
    demo = processes.demo()
    config = f"""
[[routes]]
prefix = "/"
upstream = "{demo.url}"

[client_ip]
trusted_proxies = ["127.0.0.0/8"]
"""
    gateway = processes.bastion(config=config)
    with httpx.Client(base_url=gateway.url) as client:
        seen = client.get("/headers", headers={"X-Forwarded-For": "203.0.113.9"}).json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-forwarded-for"].startswith("203.0.113.9")


async def test_oversized_requests_refused_by_the_server(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414")
    assert orjson.loads(body)["code"] == "uri_too_long"
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        big = await client.get("/hello", headers={"x-big": "v" * 17_000})
    assert big.status_code == 431


def test_body_limit_through_the_gateway(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion(
        "--upstream", demo.url, config='[limits]\nmax_body_bytes = "64KiB"\n'
    )
    with httpx.Client(base_url=gateway.url) as client:
        ok = client.post("/echo", content=b"x" * 60_000)
        assert ok.status_code == 200
        assert len(ok.content) == 60_000

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b"y" * 4096

        # /items reads the whole body before answering, so the limit is crossed before any
        # response exists (an upstream that streams its answer while reading, like /echo, has
        # begun a 200 by then: the gateway can only cut that response short).
        refused = client.post(
            "/items", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(refused, 413, "payload_too_large")


def test_console_log_format(processes: Processes) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url, "--log-format", "console")
    httpx.get(gateway.url + "/hello")
    output = gateway.stop()
    assert "request" in output
    assert "path=/hello" in output
    assert not any(line.startswith("{") for line in output.splitlines())


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_body_bytez = 1\n")
    result = subprocess.run(
        [
            str(BIN / "bastion"),
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "limits.max_body_bytez" in result.stderr


async def test_refused_websocket_handshake_is_a_problem_and_logs_no_error(
    processes: Processes,
) -> None:
    demo = processes.demo()
    gateway = processes.bastion("--upstream", demo.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET /_bastion/nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert b"x-content-type-options: nosniff" in head
    assert orjson.loads(body)["code"] == "not_found"
    assert "without completing handshake" not in gateway.stop()

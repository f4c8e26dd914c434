"""Serving the demo on uvicorn: in a thread, and as ``python -m bastion.demo``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from bastion.demo import __main__ as demo_main
from bastion.demo import server_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(base: str, deadline: float) -> None:
    while True:
        try:
            httpx.get(f"{base}/health", timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_server_config_serves_the_demo_over_real_http():
    port = _free_port()
    config = server_config("127.0.0.1", port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, time.monotonic() + 10)
        hello = httpx.get(f"{base}/hello")
        headers = httpx.get(f"{base}/headers", headers={"x-forwarded-for": "203.0.113.9"})
        with httpx.stream("GET", f"{base}/stream?chunks=2&interval=0") as streamed:
            streamed_body = streamed.read()
            transfer_encoding = streamed.headers.get("transfer-encoding")
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert (config.http, config.access_log, config.server_header) == ("httptools", False, False)
    assert config.proxy_headers is False
    assert hello.status_code == 200
    assert hello.text == "Hello, world!"
    assert "server" not in hello.headers
    # The server's own proxy-header handling is off: the peer is reported as it connected.
    assert headers.json()["client"][0] == "127.0.0.1"
    assert headers.json()["headers"]["x-forwarded-for"] == "203.0.113.9"
    assert streamed_body == b"chunk 1/2\nchunk 2/2\n"
    assert transfer_encoding == "chunked"
    assert not thread.is_alive()


@pytest.mark.parametrize("workers", [1, 2])
def test_python_dash_m_serves_the_demo(workers):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bastion.demo", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, time.monotonic() + 20)
        response = httpx.get(f"{base}/")
    finally:
        process.terminate()
        process.communicate(timeout=20)

    assert response.status_code == 200
    assert response.json()["service"] == "bastion-demo"


def test_main_passes_the_command_line_to_run(monkeypatch):
    calls = []
    monkeypatch.setattr(demo_main, "run", lambda *args, **kwargs: calls.append((args, kwargs)))

    demo_main.main(["--host", "0.0.0.0", "--port", "9100", "--workers", "3"])
    demo_main.main([])

    assert calls == [
        (("0.0.0.0", 9100), {"workers": 3, "log_level": "warning"}),
        (("127.0.0.1", 9000), {"workers": 1, "log_level": "warning"}),
    ]


def test_main_rejects_a_non_numeric_port():
    with pytest.raises(SystemExit) as exited:
        demo_main.main(["--port", "http"])

    assert exited.value.code == 2

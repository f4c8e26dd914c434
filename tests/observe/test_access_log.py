"""The access log: one JSON line per request with the documented fields."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import orjson
import pytest
import structlog
from starlette.testclient import TestClient

from bastion.http.asgi import Receive, Scope, Send
from bastion.observe import logging as bastion_logging
from bastion.observe.config import LoggingConfig
from bastion.observe.logging import JsonLines, configure_logging, get_logger
from stage_harness import around, make_deps


class Stream(io.BytesIO):
    @property
    def buffer(self) -> Stream:
        return self

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> Stream:
    stream = Stream()
    monkeypatch.setattr("sys.stdout", stream)
    configure_logging(LoggingConfig(), cache_loggers=False)
    yield stream
    structlog.reset_defaults()
    bastion_logging._access_output = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    get_logger("test.app").info("inside the request")
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"answer:" + body})


def lines(stream: Stream) -> list[dict[str, Any]]:
    bastion_logging.access_output().flush()  # type: ignore[union-attr]
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_access_line_fields(stdout: Stream) -> None:
    deps = make_deps()
    from bastion.observe.access import RequestObserver
    from bastion.pipeline.errors import ErrorStage
    from bastion.pipeline.request_id import RequestIdStage

    observer = RequestObserver(deps.metrics, access_log=True)
    stack = RequestIdStage(
        ErrorStage(app, deps=deps), config=deps.settings.request_id, deps=deps, observer=observer
    )
    client = TestClient(stack)
    client.post("/things?q=1", content=b"12345", headers={"X-Request-ID": "log-1"})
    records = lines(stdout)
    inside = next(r for r in records if r["event"] == "inside the request")
    assert inside["request_id"] == "log-1"
    access = next(r for r in records if r["event"] == "request")
    assert access["logger_name"] == "bastion.access"
    assert access["level"] == "info"
    for key, value in {
        "request_id": "log-1",
        "method": "POST",
        "path": "/things",
        "status": 201,
        "bytes_in": 5,
        "bytes_out": 12,
        "route": "_none",
        "user": None,
    }.items():
        assert access[key] == value, key
    assert access["duration_ms"] >= 0
    assert access["client_ip"] == "testclient"
    assert access["timestamp"].endswith("Z")
    assert len(access["timestamp"]) == len("2026-12-01T19:24:14.224375Z")


def test_access_log_can_be_disabled(stdout: Stream) -> None:
    deps = make_deps()
    client = TestClient(around(lambda a, d: a, app, deps))  # the harness disables it
    client.get("/")
    assert not [r for r in lines(stdout) if r["event"] == "request"]


def test_json_lines_timestamp_format() -> None:
    out = JsonLines(io.BytesIO())
    first = out.timestamp()
    assert first[10] == "T"
    assert first[-1] == "Z"
    assert first[:19] <= out.timestamp()[:19]


def _record(request_id: str) -> tuple[Any, ...]:
    return (1_700_000_000.25, request_id, "192.0.2.1", "GET", "_none", "/x", 200, 0.0015, 0, 2)


async def test_queued_access_lines_are_written_by_the_next_loop_turn() -> None:
    stream = io.BytesIO()
    out = JsonLines(stream)
    out.request((*_record("a"), None, None))
    out.request((*_record("b"), "alice", ("1" * 32, "2" * 16, True)))
    assert stream.getvalue() == b""  # queued, not rendered inside the request
    await asyncio.sleep(0)
    records = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["request_id"] for r in records] == ["a", "b"]
    assert records[0]["timestamp"] == "2023-11-14T22:13:20.250000Z"
    assert records[0]["duration_ms"] == 1.5
    assert records[0]["user"] is None
    assert "trace_id" not in records[0]
    assert records[1]["user"] == "alice"
    assert (records[1]["trace_id"], records[1]["span_id"]) == ("1" * 32, "2" * 16)
    assert list(records[1])[-4:] == ["event", "level", "logger_name", "timestamp"]


def test_a_full_queue_is_rendered_at_once() -> None:
    stream = io.BytesIO()
    out = JsonLines(stream)
    for index in range(256):
        out.request((*_record(str(index)), None, None))
    assert stream.getvalue().count(b"\n") == 256


async def test_other_lines_come_after_the_access_lines_queued_before_them(stdout: Stream) -> None:
    output = bastion_logging.access_output()
    assert output is not None
    output.request((*_record("first"), None, None))
    get_logger("test.order").warning("after the request")
    output.request((*_record("second"), None, None))
    events = [r.get("request_id", r["event"]) for r in lines(stdout)]
    assert events == ["first", "after the request", "second"]

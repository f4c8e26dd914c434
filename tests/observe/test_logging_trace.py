"""Logs and traces: trace and span ids on every line of a traced request, and access-log
sampling that never drops a refusal, a failure, a slow request or a sampled trace's line."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from bastion import Bastion, Settings
from bastion.http.asgi import Receive, Scope, Send
from bastion.http.state import RequestState
from bastion.observe import logging as bastion_logging
from bastion.observe.access import RequestObserver, sampled_in
from bastion.observe.config import LoggingConfig
from bastion.observe.logging import TRACE_IDS, configure_logging, get_logger
from bastion.observe.metrics import Metrics


class Stream(io.BytesIO):
    @property
    def buffer(self) -> Stream:
        return self

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stream]:
    stream = Stream()
    monkeypatch.setattr("sys.stdout", stream)
    configure_logging(LoggingConfig(), cache_loggers=False)
    yield stream
    structlog.reset_defaults()
    bastion_logging._access_output = None


def records(stream: Stream) -> list[dict[str, Any]]:
    output = bastion_logging.access_output()
    assert output is not None
    output.flush()
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    get_logger("test.app").info("inside the request")
    status = 500 if scope["path"] == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def engine(tmp_path: Path, **overrides: Any) -> Bastion:
    return Bastion(
        Settings(
            store={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"}, **overrides
        )
    )


def test_every_line_of_a_traced_request_carries_its_trace(stdout: Stream, tmp_path: Path) -> None:
    bastion = engine(tmp_path, tracing={"enabled": True, "exporter": "none"})
    exporter = InMemorySpanExporter()
    assert bastion.deps.tracing is not None
    bastion.deps.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(bastion.wrap(app)) as client:
        client.get("/hello", headers={"X-Request-ID": "traced-1"})
    lines = [r for r in records(stdout) if r.get("request_id") == "traced-1"]
    assert {r["event"] for r in lines} == {"inside the request", "request"}
    [span] = exporter.get_finished_spans()
    for line in lines:
        assert line["trace_id"] == f"{span.context.trace_id:032x}"
        assert line["span_id"] == f"{span.context.span_id:016x}"


def test_untraced_lines_have_no_trace_fields(stdout: Stream, tmp_path: Path) -> None:
    with TestClient(engine(tmp_path).wrap(app)) as client:
        client.get("/hello", headers={"X-Request-ID": "plain-1"})
    lines = [r for r in records(stdout) if r.get("request_id") == "plain-1"]
    assert len(lines) == 2
    assert not any("trace_id" in r or "span_id" in r for r in lines)


def test_trace_ids_in_console_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(LoggingConfig(format="console"), cache_loggers=False)
    try:
        token = TRACE_IDS.set(("a" * 32, "b" * 16, True))
        try:
            get_logger("test").info("hello")
        finally:
            TRACE_IDS.reset(token)
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "trace_id=" + "a" * 32 in out
    assert "span_id=" + "b" * 16 in out


def test_library_lines_are_json_with_the_request_and_trace_ids(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def library_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            logging.getLogger("some.library").warning("pool exhausted: %d waiting", 3)
        await app(scope, receive, send)

    bastion = engine(tmp_path, tracing={"enabled": True, "exporter": "none"})
    configure_logging(LoggingConfig(), cache_loggers=False)
    try:
        with TestClient(bastion.wrap(library_app)) as client:
            client.get("/hello", headers={"X-Request-ID": "lib-1"})
        logging.getLogger("some.library").error("outside any request")
    finally:
        structlog.reset_defaults()
        bastion_logging._access_output = None
        logging.basicConfig(force=True)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    inside = next(line for line in lines if line["event"] == "pool exhausted: 3 waiting")
    assert inside["logger_name"] == "some.library"
    assert inside["level"] == "warning"
    assert inside["request_id"] == "lib-1"
    assert len(inside["trace_id"]) == 32
    assert len(inside["span_id"]) == 16
    outside = next(line for line in lines if line["event"] == "outside any request")
    assert "request_id" not in outside
    assert "trace_id" not in outside


# -- sampling -----------------------------------------------------------------------------


def observed(
    status: int,
    *,
    rate: float,
    request_id: str = "req",
    seconds: float = 0.0,
    slow: str = "1s",
    trace: tuple[str, str, bool] | None = None,
) -> bool:
    """Whether one finished request writes its access line under the given sampling."""
    written: list[dict[str, Any]] = []

    class Capture:
        def info(self, event: str, **fields: Any) -> None:
            written.append(fields)

    observer = RequestObserver(Metrics(), access_log=True)
    observer.configure(
        LoggingConfig(access_sample_rate=rate, access_slow_threshold=slow),
        traced=trace is not None,
    )
    observer._log = Capture()
    state = RequestState(request_id, time.perf_counter() - seconds, "198.51.100.7", "http")
    scope = {"type": "http", "method": "GET", "path": "/x"}
    token = TRACE_IDS.set(trace)
    try:
        saved = bastion_logging._access_output
        bastion_logging._access_output = None  # structlog path, captured above
        try:
            observer.finish(scope, state, status, 0, 0)
        finally:
            bastion_logging._access_output = saved
    finally:
        TRACE_IDS.reset(token)
    return bool(written)


@pytest.mark.parametrize(
    ("case", "status", "options", "kept"),
    [
        ("success at rate 0", 200, {}, False),
        ("redirect at rate 0", 302, {}, False),
        ("not modified at rate 0", 304, {}, False),
        ("client error", 404, {}, True),
        ("refusal", 429, {}, True),
        ("blocked", 403, {}, True),
        ("server error", 502, {}, True),
        ("no response sent", 0, {}, True),
        ("slow success", 200, {"seconds": 2.0, "slow": "500ms"}, True),
        ("fast success under a threshold", 200, {"seconds": 0.1, "slow": "500ms"}, False),
        ("success in a sampled trace", 200, {"trace": ("a" * 32, "b" * 16, True)}, True),
        ("success in an unsampled trace", 200, {"trace": ("a" * 32, "b" * 16, False)}, False),
    ],
)
def test_sampling_rules(case: str, status: int, options: dict[str, Any], kept: bool) -> None:
    assert observed(status, rate=0.0, **options) is kept, case


def test_rate_one_keeps_every_line() -> None:
    assert all(observed(200, rate=1.0, request_id=f"id-{i}") for i in range(200))


def test_sampling_is_deterministic_per_request_id_and_near_the_rate() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    first = [observed(200, rate=0.25, request_id=i) for i in ids]
    again = [observed(200, rate=0.25, request_id=i) for i in ids]
    assert first == again
    share = sum(first) / len(ids)
    assert 0.18 < share < 0.32, share
    threshold = int(0.25 * 2**32)
    assert first == [sampled_in(i, threshold) for i in ids]


def test_sampled_access_log_through_the_engine(stdout: Stream, tmp_path: Path) -> None:
    bastion = engine(tmp_path, logging={"access_sample_rate": 0.0})
    with TestClient(bastion.wrap(app)) as client:
        client.get("/hello", headers={"X-Request-ID": "dropped"})
        client.get("/fail", headers={"X-Request-ID": "kept"})
    access = [r["request_id"] for r in records(stdout) if r["event"] == "request"]
    assert access == ["kept"]
    # The request's own lines are never sampled: only the access line is.
    assert any(r.get("request_id") == "dropped" for r in records(stdout))


def test_sampling_config_bounds() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="access_sample_rate"):
            LoggingConfig(access_sample_rate=bad)

"""The audit log's extra copies: the JSON-lines file and syslog over UDP, TCP and a unix socket.

What they promise: every event reaches the copy with the schema's fields; a rotated file is
followed; a full queue, an unwritable file or an unreachable collector never raises into the
request path and is counted in ``bastion_store_errors_total``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from bastion.audit import sinks
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent, MemoryAuditSink
from bastion.audit.sink_config import FileSinkConfig, SyslogSinkConfig
from bastion.audit.sinks import AuditCopies, JsonLinesFileSink, SyslogSink
from bastion.observe.logging import REQUEST_ID, TRACE_IDS
from bastion.observe.metrics import Metrics

EVENT = AuditEvent(
    kind="auth.login.failed",
    outcome="failure",
    actor=None,
    target="alice@example.com",
    client_ip="203.0.113.7",
    request_id="req-1",
    detail={"reason": "bad_password"},
)
FIELDS = {"ts", "kind", "outcome", "actor", "client_ip", "request_id", "target", "detail"}
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) "
    rb"(?P<app>\S+) (?P<proc>\d+) (?P<msgid>\S+) - (?P<msg>\{.*\})$",
    re.DOTALL,
)


def _event(n: int, **changes: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "kind": EVENT.kind,
        "outcome": EVENT.outcome,
        "target": EVENT.target,
        "client_ip": EVENT.client_ip,
        "request_id": f"req-{n}",
        "detail": dict(EVENT.detail),
    }
    values.update(changes)
    return AuditEvent(**values)


def _errors(metrics: Metrics, store: str, op: str) -> float:
    value = metrics.registry.get_sample_value(
        "bastion_store_errors_total", {"store": store, "op": op}
    )
    return value or 0.0


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---------------------------------------------------------------- file


async def test_file_copy_has_every_event_with_the_schema_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path), fsync=True))
    for n in range(100):
        await sink.emit(_event(n))
    await sink.close()
    records = _lines(path)
    assert [r["request_id"] for r in records] == [f"req-{n}" for n in range(100)]
    assert set(records[0]) == FIELDS
    assert records[0]["kind"] == "auth.login.failed"
    assert records[0]["detail"] == {"reason": "bad_password"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", records[0]["ts"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sink.written == 100


async def test_file_copy_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"kind":"earlier"}\n')
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path)))
    await sink.emit(_event(1))
    await sink.close()
    assert [r["kind"] for r in _lines(path)] == ["earlier", "auth.login.failed"]


@pytest.mark.parametrize("rotation", ["moved", "removed"])
async def test_file_copy_follows_rotation(tmp_path: Path, rotation: str) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path)))
    await sink.emit(_event(1))
    for _ in range(500):
        if sink.written:
            break
        await asyncio.sleep(0.01)
    assert sink.written == 1
    rotated = tmp_path / "audit.jsonl.1"
    if rotation == "moved":
        path.rename(rotated)
    else:
        path.unlink()
    await sink.emit(_event(2))
    await sink.close()
    assert [r["request_id"] for r in _lines(path)] == ["req-2"]
    if rotation == "moved":
        assert [r["request_id"] for r in _lines(rotated)] == ["req-1"]


async def test_full_queue_drops_from_the_copy_and_counts(tmp_path: Path) -> None:
    metrics = Metrics()
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path), queue=2), metrics=metrics)
    # No await between the emits: the writer task cannot run, so the third and fourth find
    # the queue full.
    for n in range(4):
        await sink.emit(_event(n))
    await sink.close()
    assert [r["request_id"] for r in _lines(path)] == ["req-0", "req-1"]
    assert _errors(metrics, "audit_file", "dropped") == 2


async def test_unwritable_file_never_raises_and_counts(tmp_path: Path) -> None:
    metrics = Metrics()
    sink = JsonLinesFileSink(
        FileSinkConfig(path=str(tmp_path / "missing-dir" / "audit.jsonl")), metrics=metrics
    )
    await sink.emit(_event(1))
    await sink.emit(_event(2))
    await sink.close()
    assert _errors(metrics, "audit_file", "write") >= 1
    assert sink.written == 0


async def test_copy_failures_are_not_logged_with_the_first_requests_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str | None, Any]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            seen.append((REQUEST_ID.get(), TRACE_IDS.get()))

    monkeypatch.setattr(sinks, "_log", Recorder())
    sink = JsonLinesFileSink(FileSinkConfig(path=str(tmp_path / "missing-dir" / "a.jsonl")))
    request = REQUEST_ID.set("req-first")
    trace = TRACE_IDS.set(("a" * 32, "b" * 16, True))
    try:
        await sink.emit(_event(1))  # starts the draining task inside this request
    finally:
        REQUEST_ID.reset(request)
        TRACE_IDS.reset(trace)
    await sink.emit(_event(2))
    await sink.close()
    assert seen
    assert set(seen) == {(None, None)}


async def test_closed_copy_ignores_later_events(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path)))
    await sink.emit(_event(1))
    await sink.close()
    await sink.emit(_event(2))
    assert [r["request_id"] for r in _lines(path)] == ["req-1"]


async def test_copy_is_redacted_like_the_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(FileSinkConfig(path=str(path)))
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    await sink.emit(
        _event(1, target=f"/api?token={token}", detail={"password": "hunter2", "reason": "x"})
    )
    await sink.close()
    record = _lines(path)[0]
    assert record["detail"]["reason"] == "x"
    assert record["detail"]["password"] != "hunter2"
    written = path.read_bytes()
    assert b"hunter2" not in written
    assert token.encode() not in written


# ---------------------------------------------------------------- syslog


def _check_message(message: bytes, *, request_id: str, pri: int) -> None:
    match = RFC5424.match(message)
    assert match is not None, message
    assert int(match["pri"]) == pri
    assert match["app"] == b"bastion"
    assert match["proc"] == str(os.getpid()).encode()
    assert match["msgid"] == b"auth.login.failed"
    body = orjson.loads(match["msg"])
    assert set(body) == FIELDS
    assert body["request_id"] == request_id


async def test_syslog_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        sink = SyslogSink(SyslogSinkConfig(address=f"udp://127.0.0.1:{port}"))
        await sink.emit(_event(1))
        await sink.emit(_event(2, outcome="success"))
        await sink.close()
        first = server.recv(65536)
        second = server.recv(65536)
    # facility 13 (log audit): warning (4) for a failure, notice (5) for a success.
    _check_message(first, request_id="req-1", pri=13 * 8 + 4)
    _check_message(second, request_id="req-2", pri=13 * 8 + 5)


async def test_syslog_over_a_unix_datagram_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        sink = SyslogSink(SyslogSinkConfig(address=f"unix://{address}", facility=4))
        await sink.emit(_event(7))
        await sink.close()
        _check_message(server.recv(65536), request_id="req-7", pri=4 * 8 + 4)


@pytest.fixture
async def tcp_collector() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP syslog collector reading octet-counted frames (RFC 6587)."""
    frames: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = await reader.readuntil(b" ")
                frames.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, frames


async def test_syslog_over_tcp_frames_every_message(
    tcp_collector: tuple[int, list[bytes]],
) -> None:
    port, frames = tcp_collector
    sink = SyslogSink(SyslogSinkConfig(address=f"tcp://127.0.0.1:{port}"))
    for n in range(50):
        await sink.emit(_event(n, detail={"note": "spaces and\nnewlines"}))
    await sink.close()
    for _ in range(250):
        if len(frames) == 50:
            break
        await asyncio.sleep(0.02)
    assert len(frames) == 50
    for n, frame in enumerate(frames):
        _check_message(frame, request_id=f"req-{n}", pri=13 * 8 + 4)


async def test_unreachable_collector_never_raises_and_counts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics()
    sink = SyslogSink(
        SyslogSinkConfig(address=f"tcp://127.0.0.1:{port}", timeout="500ms"), metrics=metrics
    )
    await sink.emit(_event(1))
    await sink.close()
    assert _errors(metrics, "audit_syslog", "write") == 1
    assert sink.written == 0


def test_syslog_message_header_fields_are_printable() -> None:
    from datetime import UTC, datetime

    from bastion.audit.sinks import syslog_message

    odd = _event(1, kind="kind with spaces and a very long name beyond thirty-two characters")
    message = syslog_message(
        odd,
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        facility=1,
        app_name="bastion",
        hostname="host",
        procid="42",
    )
    match = RFC5424.match(message)
    assert match is not None
    assert match["ts"] == b"2026-01-02T03:04:05.000006Z"
    assert match["msgid"] == b"kind_with_spaces_and_a_very_long"


# ---------------------------------------------------------------- configuration and fan-out


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("syslog.example.com:514", "udp://host:port"),
        ("http://127.0.0.1:514", "udp://host:port"),
        ("udp://127.0.0.1", "needs a host and a port"),
        ("tcp://:601", "needs a host and a port"),
        ("udp://127.0.0.1:0", "needs a host and a port"),
        ("udp://127.0.0.1:70000", "needs a host and a port"),
        ("tcp://127.0.0.1:port", "needs a host and a port"),
        ("unix://dev/log", "absolute socket path"),
    ],
)
def test_bad_syslog_addresses_are_configuration_errors(address: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuditConfig.model_validate({"syslog": {"address": address}})


@pytest.mark.parametrize("app_name", ["", "two words", "x" * 49, "caf\u00e9"])
def test_bad_syslog_app_names_are_configuration_errors(app_name: str) -> None:
    with pytest.raises(ValidationError, match="app_name"):
        SyslogSinkConfig(address="udp://127.0.0.1:514", app_name=app_name)


def test_ipv6_syslog_address() -> None:
    config = SyslogSinkConfig(address="udp://[::1]:514")
    assert config.enabled


def test_no_copy_configured_keeps_the_record_sink_alone() -> None:
    record = MemoryAuditSink()
    config = AuditConfig()
    assert AuditCopies.wrap(record, file=config.file, syslog=config.syslog) is record


async def test_copies_get_every_event_the_record_gets(tmp_path: Path) -> None:
    record = MemoryAuditSink()
    path = tmp_path / "audit.jsonl"
    sink = AuditCopies.wrap(record, file=FileSinkConfig(path=str(path)), syslog=SyslogSinkConfig())
    assert isinstance(sink, AuditCopies)
    for n in range(3):
        await sink.emit(_event(n))
    await sink.close()
    assert [e.request_id for e in record.events] == ["req-0", "req-1", "req-2"]
    assert [r["request_id"] for r in _lines(path)] == ["req-0", "req-1", "req-2"]


class _FailingRecord:
    async def emit(self, event: AuditEvent) -> None:
        raise OSError("database down")


async def test_a_failed_record_still_reaches_the_copies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditCopies(_FailingRecord(), [JsonLinesFileSink(FileSinkConfig(path=str(path)))])
    with pytest.raises(OSError, match="database down"):
        await sink.emit(_event(1))
    await sink.close()
    assert [r["request_id"] for r in _lines(path)] == ["req-1"]


async def test_the_engine_copies_the_events_of_requests(tmp_path: Path) -> None:
    from starlette.applications import Starlette

    from auth.http_harness import wrapped

    path = tmp_path / "audit.jsonl"
    audit = AuditConfig(file=FileSinkConfig(path=str(path)))
    async with wrapped(tmp_path, Starlette(), audit=audit) as app:
        assert app.engine.audit_copies is not None
        response = await app.client.post(
            "/_bastion/auth/login", json={"username": "nobody@example.com", "password": "wrong"}
        )
        assert response.status_code == 401
    records = _lines(path)
    assert [r["kind"] for r in records] == [e.kind for e in app.audit.events]
    assert records[-1]["kind"] == "auth.login.failed"
    assert records[-1]["request_id"] == response.headers["x-request-id"]
    assert "wrong" not in path.read_text()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (FileSinkConfig(path="/nonexistent-dir/audit.jsonl"), "[audit.file] cannot open"),
        (SyslogSinkConfig(address="udp://no-such-host.invalid:514"), "[audit.syslog] cannot"),
        (SyslogSinkConfig(address="tcp://no-such-host.invalid:601"), "[audit.syslog] cannot"),
    ],
)
async def test_a_copy_that_cannot_work_stops_the_start(
    config: FileSinkConfig | SyslogSinkConfig, named: str
) -> None:
    copy = JsonLinesFileSink(config) if isinstance(config, FileSinkConfig) else SyslogSink(config)
    with pytest.raises(OSError, match=re.escape(named)):
        await AuditCopies(MemoryAuditSink(), [copy]).start()
    await copy.close()


async def test_a_collector_that_is_down_does_not_stop_the_start(tmp_path: Path) -> None:
    copies = AuditCopies(
        MemoryAuditSink(),
        [
            SyslogSink(SyslogSinkConfig(address="tcp://127.0.0.1:1")),
            SyslogSink(SyslogSinkConfig(address=f"unix://{tmp_path}/no.sock")),
            JsonLinesFileSink(FileSinkConfig(path=str(tmp_path / "audit.jsonl"))),
        ],
    )
    await copies.start()
    assert (tmp_path / "audit.jsonl").exists()
    await copies.close()


async def test_the_engine_refuses_to_start_with_an_unwritable_file(tmp_path: Path) -> None:
    from bastion import Bastion, Settings
    from bastion.store.config import StoreConfig

    engine = Bastion(
        Settings(
            store=StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"),
            audit=AuditConfig(file=FileSinkConfig(path=str(tmp_path / "missing" / "a.jsonl"))),
        )
    )
    try:
        with pytest.raises(OSError, match=re.escape("[audit.file] cannot open")):
            await engine.startup()
    finally:
        await engine.shutdown()


async def test_an_event_too_large_for_a_datagram_keeps_all_but_its_detail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        port = server.getsockname()[1]
        sink = SyslogSink(SyslogSinkConfig(address=f"udp://127.0.0.1:{port}"))
        huge = {f"field{n}": "x" * 4000 for n in range(40)}
        await sink.emit(_event(1, detail=huge))
        await sink.emit(_event(2))
        await sink.close()
        first = server.recv(65536)
        second = server.recv(65536)
    _check_message(first, request_id="req-1", pri=13 * 8 + 4)
    detail = orjson.loads(RFC5424.match(first)["msg"])["detail"]  # type: ignore[index]
    assert detail == {"truncated": len(orjson.dumps(huge))}
    _check_message(second, request_id="req-2", pri=13 * 8 + 4)
    assert sink.written == 2

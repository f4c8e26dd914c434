"""The engine's audit sink: the durable log by default, committed before the response of the
request that caused the event; an explicit sink or ``enabled = false`` replaces it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion import Bastion, Settings
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent, LoggingAuditSink, MemoryAuditSink
from bastion.audit.log import AuditLog
from bastion.audit.sink_config import FileSinkConfig
from bastion.http.problems import BastionError
from bastion.store.config import StoreConfig


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def app() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


ATTACK = "/?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E"


def stored_events(path: Path) -> list[tuple[int, str, str | None]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT seq, kind, request_id FROM audit_events ORDER BY seq"
        ).fetchall()


def test_events_are_committed_before_the_response_completes(tmp_path: Path) -> None:
    path = tmp_path / "bastion.db"
    engine = Bastion(Settings(store=StoreConfig(database_url=f"sqlite+aiosqlite:///{path}")))
    assert isinstance(engine.audit_log, AuditLog)
    with TestClient(engine.wrap(app())) as client:
        assert client.get("/").status_code == 200
        assert stored_events(path) == []
        response = client.get(ATTACK)
        assert response.status_code == 403
        # Read by another connection as soon as the response is complete.
        assert stored_events(path) == [(1, "inspect.blocked", response.headers["x-request-id"])]
    assert engine.audit_log.queued == 0


def test_an_explicit_sink_replaces_the_durable_log(tmp_path: Path) -> None:
    sink = MemoryAuditSink()
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    engine = Bastion(Settings(store=store), audit=sink)
    assert engine.audit_log is None
    with TestClient(engine.wrap(app())) as client:
        assert client.get(ATTACK).status_code == 403
    assert sink.kinds() == ["inspect.blocked"]
    assert stored_events(tmp_path / "b.db") == []


def test_disabled_audit_only_logs(tmp_path: Path) -> None:
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    engine = Bastion(Settings(store=store, audit=AuditConfig(enabled=False)))
    assert engine.audit_log is None
    assert isinstance(engine.deps.audit, LoggingAuditSink)


async def test_an_event_refused_by_the_closed_log_still_reaches_the_file_copy(
    tmp_path: Path,
) -> None:
    """Shut-down closes the durable log before the copies: an event emitted in between is
    refused (503) by the log, and its copy is still written."""
    copy = tmp_path / "audit.jsonl"
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    settings = Settings(store=store, audit=AuditConfig(file=FileSinkConfig(path=str(copy))))
    engine = Bastion(settings)
    await engine.startup()
    assert engine.audit_log is not None
    log = engine.audit_log
    close_log = log.close
    refused: list[str] = []

    async def close_then_emit() -> None:
        await close_log()
        try:
            await engine.deps.audit.emit(AuditEvent(kind="admin.user.disabled", target="bob"))
        except BastionError as exc:
            refused.append(exc.code)

    log.close = close_then_emit  # type: ignore[method-assign]
    await engine.shutdown()
    assert refused == ["overloaded"]
    lines = [orjson.loads(line) for line in copy.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["admin.user.disabled"]

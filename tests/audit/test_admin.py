"""``GET /_bastion/admin/audit``: filters, cursor pagination, parameter errors and who may ask.

The events are rows of ``audit_events`` in the engine's own SQLite database; the endpoint only
reads them, so these tests write them directly with known kinds, actors and times.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from auth.http_harness import Wrapped, assert_auth_problem, bearer, wrapped
from auth.service_harness import auth_config
from bastion.audit.api import AUDIT_PERMISSION, parse_filter, parse_time
from bastion.audit.models import AuditEventRow
from bastion.audit.reader import FIELDS
from bastion.http.problems import BastionError
from problem_assertions import assert_problem

URL = "/_bastion/admin/audit"
KINDS = ("auth.login.failed", "access.denied", "inspect.blocked", "auth.token.reused")


def _rows(count: int, start_seq: int = 1, now: datetime | None = None) -> list[AuditEventRow]:
    """``count`` events one minute apart ending ``now``: kinds and actors in rotation."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    rows = []
    for index in range(count):
        seq = start_seq + index
        rows.append(
            AuditEventRow(
                seq=seq,
                ts=now - timedelta(minutes=count - 1 - index),
                kind=KINDS[seq % len(KINDS)],
                outcome="denied",
                actor=f"user-{seq % 3}",
                target="/api/orders",
                client_ip="203.0.113.9",
                request_id=f"req-{seq}",
                detail=orjson.dumps({"n": seq}).decode(),
                key_id=None,
                prev_hash=f"{seq - 1:064x}",
                hash=f"{seq:064x}",
            )
        )
    return rows


@dataclass
class Admin:
    """A wrapped app with events stored, and tokens of an admin and a viewer."""

    app: Wrapped
    admin: str
    viewer: str
    now: datetime
    """When the newest of the first 20 events happened (the others a minute apart before)."""

    async def get(self, query: str = "", token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = bearer(token if token is not None else self.admin)
        return await self.app.client.get(f"{URL}{query}", headers=headers, **kwargs)

    async def store(self, rows: list[AuditEventRow]) -> None:
        assert self.app.engine.stores is not None
        async with self.app.engine.stores.database.session() as session:
            session.add_all(rows)
            await session.commit()
            # The head moves with the rows, as an append moves it: readers serve up to it.
            await session.execute(
                text("UPDATE bastion_audit_chain SET seq = (SELECT max(seq) FROM audit_events)")
            )
            await session.commit()


async def _hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Admin]:
    app = Starlette(routes=[Route("/hello", _hello)])
    config = auth_config(roles={"auditor": [AUDIT_PERMISSION]})
    async with wrapped(tmp_path, app, auth=config) as running:
        admin = await running.token("root@example.com", "admin")
        viewer = await running.token("viewer@example.com", "viewer")
        harness = Admin(running, admin, viewer, datetime.now(UTC).replace(microsecond=0))
        await harness.store(_rows(20, now=harness.now))
        yield harness


async def test_newest_first_with_every_field(api: Admin) -> None:
    response = await api.get()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert [e["seq"] for e in data["events"]] == list(range(20, 0, -1))
    assert data["next_cursor"] is None
    first = data["events"][0]
    assert tuple(first) == FIELDS
    assert first["detail"] == {"n": 20}
    assert first["request_id"] == "req-20"
    assert first["ts"] == api.now.isoformat(timespec="microseconds")


async def test_cursor_walks_every_event_once_while_new_ones_arrive(api: Admin) -> None:
    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        response = await api.get(f"?limit=6{cursor}")
        assert response.status_code == 200, response.text
        data = response.json()
        seen += [e["seq"] for e in data["events"]]
        pages += 1
        if pages == 1:
            # Appended after the first page: the walk back is not disturbed by them.
            await api.store(_rows(5, start_seq=21))
        if data["next_cursor"] is None:
            break
        cursor = f"&cursor={data['next_cursor']}"
    assert seen == list(range(20, 0, -1))
    assert pages == 4


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?kind=access.denied", [s for s in range(20, 0, -1) if s % 4 == 1]),
        ("?kind=auth.*", [s for s in range(20, 0, -1) if s % 4 in (0, 3)]),
        ("?kind=auth.login.failed&actor=user-0", [12]),
        ("?actor=user-2", [s for s in range(20, 0, -1) if s % 3 == 2]),
        ("?kind=no.such.kind", []),
        # Event 20 is now, 19 a minute ago…: the last 4 minutes and a half hold 20 to 16.
        ("?since=270s", [20, 19, 18, 17, 16]),
        ("?until=1000m", []),
    ],
)
async def test_filters(api: Admin, query: str, expected: list[int]) -> None:
    response = await api.get(query)
    assert response.status_code == 200, response.text
    assert [e["seq"] for e in response.json()["events"]] == expected


async def test_time_range_in_rfc3339(api: Admin) -> None:
    since = (api.now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    until = (api.now - timedelta(minutes=2)).isoformat()
    response = await api.get("", params={"since": since, "until": until})
    assert response.status_code == 200, response.text
    # since inclusive (event 15 is exactly five minutes old), until exclusive (18 is excluded).
    assert [e["seq"] for e in response.json()["events"]] == [17, 16, 15]


async def test_head_answers_without_a_body(api: Admin) -> None:
    response = await api.app.client.head(URL, headers=bearer(api.admin))
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("?colour=red", {"colour"}),
        ("?two%20words=1", {"query"}),
        ("?" + "p" * 33 + "=1", {"query"}),
        ("?kind=a&kind=b", {"kind"}),
        ("?kind=Auth.Login", {"kind"}),
        ("?kind=auth.*.failed", {"kind"}),
        ("?kind=auth%25", {"kind"}),
        ("?kind=" + "a" * 65, {"kind"}),
        ("?actor=" + "a" * 129, {"actor"}),
        ("?actor=a%09b", {"actor"}),
        ("?since=yesterday", {"since"}),
        ("?since=2026-01-31T12:00:00", {"since"}),
        ("?since=2026-13-01T00:00:00Z", {"since"}),
        ("?since=1y", {"since"}),
        ("?since=99999999999d", {"since"}),
        ("?until=-1h", {"until"}),
        ("?since=1h&until=2h", {"until"}),
        ("?cursor=abc", {"cursor"}),
        ("?cursor=0", {"cursor"}),
        ("?cursor=-5", {"cursor"}),
        ("?cursor=99999999999999999999", {"cursor"}),
        ("?cursor=9999999999999999999", {"cursor"}),
        ("?cursor=9300000000000000000", {"cursor"}),
        ("?cursor=5%0A", {"cursor"}),
        ("?kind=auth.login%0A", {"kind"}),
        ("?since=0001-01-01T00:00:00%2B14:00", {"since"}),
        ("?until=9999-12-31T23:59:59-14:00", {"until"}),
        ("?limit=%C2%B2", {"limit"}),
        ("?limit=5%0A", {"limit"}),
        ("?limit=0", {"limit"}),
        ("?limit=501", {"limit"}),
        ("?limit=ten", {"limit"}),
        ("?limit=1e3", {"limit"}),
        ("?limit=0&cursor=x&since=later", {"limit", "cursor", "since"}),
        ("?kind=%C3%A9", {"kind"}),
        ("?kind=%ff", {"query"}),
    ],
)
async def test_bad_parameters_are_invalid_query(api: Admin, query: str, fields: set[str]) -> None:
    with pytest.raises(BastionError) as raised:
        parse_filter(query[1:].encode("ascii"))
    assert raised.value.code == "invalid_query"
    response = await api.get(query)
    data = assert_problem(response, 400, "invalid_query")
    assert {e["field"] for e in data["errors"]} == fields, data


async def test_too_many_parameters_are_invalid_query(api: Admin) -> None:
    response = await api.get("?" + "&".join(f"p{n}=1" for n in range(50)))
    data = assert_problem(response, 400, "invalid_query")
    assert data["errors"][0]["field"] == "query"


async def test_needs_a_principal(api: Admin) -> None:
    response = await api.app.client.get(URL)
    assert_auth_problem(response, 401, "authentication_required")


async def test_a_forged_token_is_refused(api: Admin) -> None:
    response = await api.get(token=api.admin[:-4] + "AAAA")
    assert_auth_problem(response, 401, "invalid_token")


async def test_viewer_is_refused_and_the_refusal_audited(api: Admin) -> None:
    response = await api.get(token=api.viewer)
    assert_auth_problem(response, 403, "permission_denied")
    denied = [e for e in api.app.audit.events if e.kind == "access.denied"]
    assert len(denied) == 1
    assert denied[0].detail["permission"] == AUDIT_PERMISSION
    assert denied[0].request_id == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("roles", "status"),
    [(("admin",), 200), (("auditor",), 200), (("operator",), 403), (("viewer",), 403), ((), 403)],
)
async def test_who_may_read(api: Admin, roles: tuple[str, ...], status: int) -> None:
    token = await api.app.token(f"{'-'.join(roles) or 'nobody'}@example.org", *roles)
    response = await api.get(token=token)
    assert response.status_code == status, response.text


async def test_an_api_key_needs_the_scope_too(api: Admin) -> None:
    narrow = await api.app.admin.create_api_key("root@example.com", scopes=["orders:read"])
    wide = await api.app.admin.create_api_key("root@example.com", scopes=[AUDIT_PERMISSION])
    refused = await api.app.client.get(URL, headers={"X-API-Key": narrow.key})
    assert_auth_problem(refused, 403, "permission_denied")
    allowed = await api.app.client.get(URL, headers={"X-API-Key": wide.key})
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", URL, 405, "method_not_allowed"),
        ("DELETE", URL, 405, "method_not_allowed"),
        ("GET", URL + "/1", 404, "not_found"),
        ("GET", URL + "/", 404, "not_found"),
    ],
)
async def test_other_methods_and_paths(
    api: Admin, method: str, path: str, status: int, code: str
) -> None:
    response = await api.app.client.request(method, path, headers=bearer(api.admin))
    assert_problem(response, status, code)


async def test_a_kind_family_is_a_prefix_not_a_pattern(api: Admin) -> None:
    odd = _rows(2, start_seq=21)
    odd[0].kind, odd[1].kind = "admin_x.changed", "adminyx.changed"
    await api.store(odd)
    response = await api.get("?kind=admin_x.*")
    assert [e["seq"] for e in response.json()["events"]] == [21]


async def test_no_endpoint_without_auth(tmp_path: Path) -> None:
    from bastion import Bastion, Settings
    from bastion.auth.config import AuthConfig
    from bastion.store.config import StoreConfig

    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    engine = Bastion(Settings(store=store, auth=AuthConfig(enabled=False)))
    app = engine.wrap(Starlette(routes=[Route("/hello", _hello)]))
    await engine.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert_problem(await client.get(URL), 404, "not_found")
    finally:
        await engine.shutdown()


def test_parse_time_durations_count_back_from_now() -> None:
    now = 1_800_000_000.0
    assert parse_time("1h", now=now) == datetime.fromtimestamp(now - 3600, UTC)
    assert parse_time("90s", now=now) == datetime.fromtimestamp(now - 90, UTC)
    assert parse_time("2026-01-31T12:00:00+02:00") == datetime(2026, 1, 31, 10, tzinfo=UTC)

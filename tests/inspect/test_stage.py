"""The ``inspect`` stage in a wrapped app: refusals that reach nothing, monitor mode, per-route
modes and exclusions, bodies over the limit, exact body replay, CIDR lists, Bastion's own login
fields, WebSocket handshakes, and what the audit log and the metrics record."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from auth.service_harness import auth_config
from bastion import Bastion, Settings
from bastion.audit.events import MemoryAuditSink
from bastion.auth.admin import IdentityAdmin
from bastion.http.asgi import Message
from bastion.inspect.config import ExclusionConfig, InspectConfig, InspectRouteConfig
from bastion.inspect.core import Location
from bastion.inspect.findings import EXCERPT_CHARS, REDACTED, excerpt
from bastion.store.config import StoreConfig
from inspection_harness import CLIENT_IP, SQLI, XSS, protected
from problem_assertions import assert_problem

LIMIT = 1024
SMALL = InspectConfig(max_request_bytes=LIMIT, max_location_bytes=512)


def _assert_nothing_leaks(text: str, *secrets: str) -> None:
    for secret in ("sqli", "xss", "union", "script", *secrets):
        assert secret not in text.lower(), text


async def test_a_blocked_request_never_reaches_the_app(tmp_path: Path) -> None:
    async with protected(tmp_path) as p, p.client() as client:
        response = await client.post("/items", json={"name": "ok", "comment": SQLI})
        data = assert_problem(response, 403, "request_blocked")
        assert data["request_id"] == response.headers["x-request-id"]
        _assert_nothing_leaks(response.text, SQLI, "password", "json:comment")
        assert p.recorder.calls == []  # not the request, not a byte of its body
        (event,) = p.events("inspect.blocked")
        assert event.request_id == data["request_id"]
        assert event.client_ip == CLIENT_IP
        assert event.target == "/items"
        assert event.outcome == "denied"
        detail = event.detail
        assert detail["mode"] == "block"
        assert detail["score"] >= 5
        assert "sqli" in detail["categories"]
        assert detail["locations"] == ["json:comment"]
        assert all(rule.startswith("sqli-") for rule in detail["rules"])
        assert detail["matches"][0]["excerpt"] == SQLI
        assert p.metric('bastion_inspect_blocked_total{category="sqli"}') == 1.0

        clean = await client.post("/items", json={"name": "ok", "comment": "fine"})
        assert clean.status_code == 200
        assert len(p.recorder.calls) == 1


async def test_a_query_attack_is_blocked_without_reading_a_body(tmp_path: Path) -> None:
    async with protected(tmp_path) as p, p.client() as client:
        response = await client.get("/search", params={"q": XSS})
        assert_problem(response, 403, "request_blocked")
        _assert_nothing_leaks(response.text, XSS, "query:q")
        assert p.recorder.calls == []
        assert p.events("inspect.blocked")[0].detail["locations"] == ["query:q"]


async def test_monitor_mode_forwards_audits_and_counts(tmp_path: Path) -> None:
    async with protected(tmp_path, inspect=InspectConfig(mode="monitor")) as p:
        async with p.client() as client:
            body = b'{"comment": "' + SQLI.encode() + b'"}'
            response = await client.post(
                "/items", content=body, headers={"content-type": "application/json"}
            )
        assert response.status_code == 200
        assert p.recorder.calls[0].body == body
        assert p.recorder.calls[0].scope["state"]["bastion.inspect"].flagged
        (event,) = p.events("inspect.detected")
        assert event.outcome == "success"
        assert event.detail["mode"] == "monitor"
        assert not p.events("inspect.blocked")
        assert p.metric('bastion_inspect_detected_total{category="sqli"}') == 1.0
        assert p.metric('bastion_inspect_blocked_total{category="sqli"}') == 0.0


async def test_per_route_modes(tmp_path: Path) -> None:
    config = InspectConfig(
        routes=[
            InspectRouteConfig(path="/raw/**", mode="off"),
            InspectRouteConfig(path="/watch/**", mode="monitor"),
        ]
    )
    async with protected(tmp_path, inspect=config) as p, p.client() as client:
        assert (await client.get("/raw/x", params={"q": XSS})).status_code == 200
        assert (await client.get("/watch/x", params={"q": XSS})).status_code == 200
        assert_problem(await client.get("/other", params={"q": XSS}), 403, "request_blocked")
        assert [call.scope["path"] for call in p.recorder.calls] == ["/raw/x", "/watch/x"]
        assert p.audit.kinds() == ["inspect.detected", "inspect.blocked"]


async def test_exclusions_apply_to_their_location_only(tmp_path: Path) -> None:
    exclusion = ExclusionConfig(path="/profile", location="json:bio", categories=["xss"])
    async with protected(tmp_path, inspect=InspectConfig(exclusions=[exclusion])) as p:
        async with p.client() as client:
            assert (await client.post("/profile", json={"bio": XSS})).status_code == 200
            blocked = await client.post("/profile", json={"name": XSS})
            assert_problem(blocked, 403, "request_blocked")
            assert_problem(await client.post("/other", json={"bio": XSS}), 403, "request_blocked")
        assert len(p.recorder.calls) == 1


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [0, 1, LIMIT - 1, LIMIT, LIMIT + 1, 5 * LIMIT + 7])
@pytest.mark.parametrize("chunk", [None, 1, 100, LIMIT])
async def test_the_app_receives_exactly_the_bytes_sent(
    tmp_path: Path, size: int, chunk: int | None
) -> None:
    data = os.urandom(size)
    headers = {"content-type": "application/octet-stream"}
    async with protected(tmp_path, inspect=SMALL) as p, p.client() as client:
        content: Any = data if chunk is None else _chunks(data, chunk)
        response = await client.post("/upload", content=content, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"bytes": size}
        (call,) = p.recorder.calls
        assert call.body == data
        assert not call.messages[-1].get("more_body", False)


async def test_inspect_prefix_lets_the_rest_through_uninspected(tmp_path: Path) -> None:
    padding = "a" * (2 * LIMIT)
    async with protected(tmp_path, inspect=SMALL) as p, p.client() as client:
        late = f"note={padding}&q={XSS}".encode()
        form = {"content-type": "application/x-www-form-urlencoded"}
        response = await client.post("/form", content=late, headers=form)
        assert response.status_code == 200
        assert p.recorder.calls[0].body == late
        early = f"q={XSS}&note={padding}".encode()
        blocked = await client.post("/form", content=_chunks(early, 100), headers=form)
        assert_problem(blocked, 403, "request_blocked")
        assert blocked.headers["connection"] == "close"  # the unread rest of the body
        assert len(p.recorder.calls) == 1


async def test_reject_refuses_bodies_over_the_limit(tmp_path: Path) -> None:
    config = SMALL.model_copy(update={"over_limit": "reject"})
    async with protected(tmp_path, inspect=config) as p, p.client() as client:
        big = b"x" * (LIMIT + 1)
        declared = await client.post("/upload", content=big)
        assert_problem(declared, 413, "payload_too_large")
        streamed = await client.post("/upload", content=_chunks(big, 256))
        assert_problem(streamed, 413, "payload_too_large")
        # A text body is one location: it fits when it fits max_location_bytes.
        fits = await client.post("/upload", content=b"x" * 400)
        assert fits.status_code == 200
        assert len(p.recorder.calls) == 1
        assert p.metric('bastion_inspect_refused_total{reason="over_limit"}') == 2.0


async def test_at_most_the_limit_is_read_before_the_app_starts(tmp_path: Path) -> None:
    pulled = 0
    at_start: list[int] = []

    async with protected(tmp_path, inspect=SMALL) as p:
        p.recorder.on_call = lambda: at_start.append(pulled)
        pipeline = p.app

        async def receive() -> Message:
            nonlocal pulled
            pulled += 1
            return {"type": "http.request", "body": b"y" * 256, "more_body": pulled < 40}

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/upload",
            "raw_path": b"/upload",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"transfer-encoding", b"chunked")],
            "client": (CLIENT_IP, 1234),
            "server": ("testserver", 80),
            "state": {},
        }
        recorder_calls = p.recorder.calls
        await pipeline.pipeline(scope, receive, send)
    assert sent[0]["status"] == 200
    assert at_start == [LIMIT // 256 + 1]  # the limit plus the message that crossed it
    assert len(recorder_calls[0].body) == 40 * 256


@pytest.mark.parametrize(
    ("allow", "deny", "status"),
    [(["203.0.113.0/24"], [], 200), ([], ["203.0.113.0/24"], 403), ([], ["198.51.100.0/24"], 403)],
)
async def test_cidr_lists(tmp_path: Path, allow: list[str], deny: list[str], status: int) -> None:
    config = InspectConfig(allow_cidrs=allow, deny_cidrs=deny)
    async with protected(tmp_path, inspect=config) as p, p.client() as client:
        response = await client.get("/search", params={"q": XSS})
        assert response.status_code == status
        if status == 403:
            assert_problem(response, 403, "request_blocked")
    if deny == ["203.0.113.0/24"]:
        async with protected(tmp_path, inspect=config) as p, p.client() as client:
            refused = await client.get("/clean")
            assert_problem(refused, 403, "request_blocked")
            assert p.metric('bastion_inspect_refused_total{reason="deny_cidr"}') == 1.0
            async with p.client("192.0.2.1") as other:
                assert (await other.get("/clean")).status_code == 200


async def test_login_password_and_otp_fields_are_not_inspected(tmp_path: Path) -> None:
    password = "' or 1=1 -- and a long enough passphrase"
    async with protected(tmp_path) as p, p.client() as client:
        assert p.engine.identity is not None
        await IdentityAdmin(p.engine.identity.service).create_user("alice", password)
        login = "/_bastion/auth/login"
        ok = await client.post(login, json={"username": "alice", "password": password})
        assert ok.status_code == 200, ok.text
        wrong = await client.post(
            login, json={"username": "alice", "password": "' or 1=1 --", "otp": "' or 1=1 --"}
        )
        assert_problem(wrong, 401, "invalid_credentials")
        attack = await client.post(login, json={"username": SQLI, "password": "x"})
        assert_problem(attack, 403, "request_blocked")
        (event,) = p.events("inspect.blocked")
        assert event.detail["locations"] == ["json:username"]
        assert "' or 1=1" not in str(p.audit.events)


async def test_an_authenticated_principal_is_the_actor(tmp_path: Path) -> None:
    async with protected(tmp_path) as p, p.client() as client:
        assert p.engine.identity is not None
        user = await IdentityAdmin(p.engine.identity.service).create_user(
            "bob", "correct horse battery staple"
        )
        tokens = await client.post(
            "/_bastion/auth/login",
            json={"username": "bob", "password": "correct horse battery staple"},
        )
        bearer = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        response = await client.get("/search", params={"q": XSS}, headers=bearer)
        assert_problem(response, 403, "request_blocked")
        assert p.events("inspect.blocked")[0].actor == user


def _websocket_app(calls: list[str]) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        calls.append(websocket.url.path)
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


def test_websocket_handshakes_are_inspected(tmp_path: Path) -> None:
    calls: list[str] = []
    audit = MemoryAuditSink()
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'ws.db'}")
    engine = Bastion(Settings(store=store, auth=auth_config()), audit=audit)
    with TestClient(engine.wrap(_websocket_app(calls))) as client:
        with client.websocket_connect("/ws?room=lobby") as ws:
            assert ws.receive_text() == "hello"
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/ws", params={"room": XSS}),
        ):
            pass
        assert_problem(denied.value, 403, "request_blocked")
        with (
            pytest.raises(WebSocketDenialResponse) as by_header,
            client.websocket_connect("/ws", headers={"Referer": f"https://example.com/?q={XSS}"}),
        ):
            pass
        assert by_header.value.status_code == 403
    assert calls == ["/ws"]
    assert audit.kinds() == ["inspect.blocked", "inspect.blocked"]
    assert audit.events[0].detail["locations"] == ["query:room"]
    assert audit.events[1].detail["locations"] == ["header:referer"]


@pytest.mark.parametrize(
    ("id_", "location", "value", "expected"),
    [
        ("short", Location("query", "q"), SQLI, SQLI),
        ("cut", Location("query", "q"), "a " * 50, ("a " * 32)[: EXCERPT_CHARS - 1] + "…"),
        ("secret-name", Location("cookie", "session_id"), XSS, REDACTED),
        ("password-name", Location("json", "user.password"), SQLI, REDACTED),
        (
            "jwt",
            Location("query", "q"),
            "x' eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.abc",
            "x' " + REDACTED,
        ),
        ("api-key", Location("header", "referer"), "bst_0123456789abcdef <x>", REDACTED + " <x>"),
        ("control", Location("body"), "a\r\nb\x00", "a??b?"),
    ],
)
def test_excerpts_are_short_and_redacted(
    id_: str, location: Location, value: str, expected: str
) -> None:
    shown = excerpt(location, value)
    assert shown == expected
    assert len(shown) <= EXCERPT_CHARS

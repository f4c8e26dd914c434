"""Size limits: 431, 414 and 413 as problem+json, never a 500; bodies never fully buffered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from bastion.http.asgi import Message, Receive, Scope, Send
from bastion.pipeline.config import BodyLimitRule, LimitsConfig
from bastion.pipeline.limits import LimitsStage
from bastion.proxy.config import RouteConfig
from bastion.settings import Settings
from problem_assertions import assert_problem
from stage_harness import around, make_deps


def client(app, config: LimitsConfig, routes: list[RouteConfig] | None = None) -> TestClient:  # type: ignore[no-untyped-def]
    settings = Settings(limits=config, routes=routes or [])
    deps = make_deps(settings)
    return TestClient(around(lambda a, d: LimitsStage(a, config=config, deps=d), app, deps))


def chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


SMALL = LimitsConfig(max_header_bytes=2048, max_url_bytes=256, max_body_bytes=4096)


@pytest.mark.parametrize(
    ("id_", "request_kwargs", "status", "code"),
    [
        ("url-too-long", {"url": "/hello?q=" + "a" * 300}, 414, "uri_too_long"),
        ("path-too-long", {"url": "/" + "p" * 300}, 414, "uri_too_long"),
        (
            "one-huge-header",
            {"url": "/hello", "headers": {"x-big": "v" * 3000}},
            431,
            "request_header_too_large",
        ),
        (
            "many-headers",
            {"url": "/hello", "headers": {f"x-h{i}": "v" * 40 for i in range(60)}},
            431,
            "request_header_too_large",
        ),
        (
            "declared-body-too-large",
            {"url": "/echo", "method": "POST", "content": b"x" * 5000},
            413,
            "payload_too_large",
        ),
        (
            "chunked-body-too-large",
            {"url": "/echo", "method": "POST", "content": chunks(9000)},
            413,
            "payload_too_large",
        ),
        (
            "bad-content-length",
            {"url": "/echo", "method": "POST", "headers": {"content-length": "abc"}},
            400,
            "bad_request",
        ),
    ],
)
def test_refusals(
    echo_app: Starlette, id_: str, request_kwargs: dict, status: int, code: str
) -> None:  # type: ignore[type-arg]
    method = request_kwargs.pop("method", "GET")
    response = client(echo_app, SMALL).request(method, **request_kwargs)
    assert_problem(response, status, code)


@pytest.mark.parametrize(
    "raw_path",
    [b"/a/../hello", b"/a/%2e%2e/hello", b"/./hello", b"/a/..", b"/a/%2E/b", b"/.."],
)
def test_dot_segments_refused(echo_app: Starlette, raw_path: bytes) -> None:
    from urllib.parse import unquote

    async def with_path(scope, receive, send):  # type: ignore[no-untyped-def]
        scope["raw_path"] = raw_path
        scope["path"] = unquote(raw_path.decode())
        await app(scope, receive, send)

    app = client(echo_app, SMALL).app
    assert_problem(TestClient(with_path).get("/x"), 400, "bad_request")


@pytest.mark.parametrize("path", ["/.well-known/x", "/a/.hidden", "/a/b..c", "/a/..b", "/v1.2/x"])
def test_dots_inside_segments_pass(path: str) -> None:
    async def ok(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    assert client(ok, SMALL).get(path).status_code == 204


def test_duplicate_host_refused(echo_app: Starlette) -> None:
    response = client(echo_app, SMALL).get(
        "/hello", headers=[("host", "public.example"), ("host", "internal.example")]
    )
    assert_problem(response, 400, "bad_request")


def test_within_limits_pass(echo_app: Starlette) -> None:
    c = client(echo_app, SMALL)
    assert c.post("/echo", content=b"y" * 4096).content == b"y" * 4096
    assert c.post("/echo", content=chunks(4000)).content == b"x" * 4000


def test_413_closes_connection(echo_app: Starlette) -> None:
    response = client(echo_app, SMALL).post("/echo", content=chunks(9000))
    assert response.headers["connection"] == "close"


def test_body_rules_by_path_and_type(echo_app: Starlette) -> None:
    config = LimitsConfig(
        max_body_bytes=100,
        body=[
            BodyLimitRule(
                path="/echo", content_types=["application/octet-stream"], max_bytes=10_000
            )
        ],
    )
    c = client(echo_app, config)
    big = b"z" * 5000
    assert (
        c.post(
            "/echo", content=big, headers={"content-type": "application/octet-stream"}
        ).status_code
        == 200
    )
    assert_problem(
        c.post("/echo", content=big, headers={"content-type": "text/plain"}),
        413,
        "payload_too_large",
    )


def test_route_override(echo_app: Starlette) -> None:
    routes = [
        RouteConfig(name="up", prefix="/echo", upstream="http://127.0.0.1:1", max_body_bytes=50_000)
    ]
    c = client(echo_app, LimitsConfig(max_body_bytes=100), routes)
    assert c.post("/echo", content=b"q" * 40_000).status_code == 200


def test_zero_means_unlimited(echo_app: Starlette) -> None:
    c = client(echo_app, LimitsConfig(max_body_bytes=0))
    assert c.post("/echo", content=chunks(200_000)).status_code == 200


async def test_stream_aborted_without_reading_everything() -> None:
    """The read that crosses the limit fails: the rest of the body is never pulled."""
    config = LimitsConfig(max_body_bytes=10_000)
    deps = make_deps(Settings(limits=config))
    pulled = 0
    reader_error: list[Exception] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if not message.get("more_body"):
                    break
        except Exception as exc:
            reader_error.append(exc)
            raise

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"b" * 1000, "more_body": pulled < 10_000}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = around(lambda a, d: LimitsStage(a, config=config, deps=d), reader, deps)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/up",
        "raw_path": b"/up",
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 5),
        "scheme": "http",
        "state": {},
    }
    await app(scope, receive, send)
    assert pulled == 11
    assert reader_error
    assert getattr(reader_error[0], "code", None) == "payload_too_large"
    assert sent[0]["status"] == 413

"""Harness for stage tests: a stage under test runs inside the real request-id and error stages,
so it sees the request state and its errors are rendered as in production."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.framework import adopt_error_handling
from bastion.http.routes import RouteTable
from bastion.observe.access import RequestObserver
from bastion.observe.metrics import Metrics
from bastion.pipeline.errors import ErrorStage
from bastion.pipeline.request_id import RequestIdStage
from bastion.settings import Settings


def make_deps(settings: Settings | None = None) -> Deps:
    settings = settings or Settings()
    return Deps(
        settings=settings,
        metrics=Metrics(),
        routes=RouteTable(settings.routes),
        prefix=settings.server.prefix,
    )


def around(stage: Callable[[ASGIApp, Deps], ASGIApp], app: ASGIApp, deps: Deps) -> ASGIApp:
    """``stage`` wrapped in the request-id and error stages, as the engine places it."""
    observer = RequestObserver(deps.metrics, access_log=False)
    inner = stage(app, deps)
    return RequestIdStage(
        ErrorStage(inner, deps=deps), config=deps.settings.request_id, deps=deps, observer=observer
    )


async def _hello(request: Request) -> Response:
    return PlainTextResponse("hello")


async def _echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "text/plain"))


async def _boom(request: Request) -> Response:
    raise RuntimeError("secret internal detail")


def make_echo_app() -> Starlette:
    """A small app: GET /hello, POST /echo, GET /boom (raises), with the error handlers that
    ``Bastion.wrap`` registers."""
    app = Starlette(
        routes=[
            Route("/hello", _hello),
            Route("/echo", _echo, methods=["POST", "PUT"]),
            Route("/boom", _boom),
        ]
    )
    adopt_error_handling(app)
    return app


class RecordingApp:
    """A raw ASGI app answering 200 ``ok`` with fixed headers, counting its calls."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.headers = headers or []
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": b"ok"})


async def exchange(app: ASGIApp, scope: Scope) -> list[Message]:
    """Call ``app`` with ``scope`` and an empty request body; return the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent

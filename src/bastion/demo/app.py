"""The demo upstream API: a small, realistic JSON service that Bastion's gateway fronts.

Pure Starlette with no middleware, orjson-rendered responses, and ``GET /hello`` answered before
routing, because it is also the upstream the benchmarks measure the gateway against.
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ExceptionHandler, Receive, Scope, Send

from bastion.demo import streams, websocket
from bastion.demo.catalog import Catalog, CatalogFull
from bastion.demo.probes import ProbeEndpoints
from bastion.demo.resources import CatalogEndpoints
from bastion.demo.responses import OrjsonResponse, error_response
from bastion.demo.validation import BodyTooLarge, InvalidInput

__all__ = ["SERVICE", "DemoApp", "create_app"]

SERVICE = "bastion-demo"
HELLO = b"Hello, world!"
_HELLO_HEADERS = (
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(HELLO)).encode()),
)
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


class DemoApp(Starlette):
    """The demo's Starlette app, answering ``GET /hello`` without routing.

    Each request gets fresh message dicts and header list: a middleware in front may mutate them.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/hello"
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            headers = list(_HELLO_HEADERS)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": HELLO})
            return
        await super().__call__(scope, receive, send)


async def hello(request: Request) -> Response:
    """``GET /hello``: plain text; requests the fast path skips (``HEAD``) land here."""
    return PlainTextResponse(HELLO)


async def health(request: Request) -> Response:
    """``GET /health``."""
    return OrjsonResponse({"status": "ok"})


_METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}


def _endpoint_list(routes: list[BaseRoute]) -> list[str]:
    """``"METHOD /path/{param}"`` for every route, in routing order (``HEAD`` left implicit)."""
    listed: list[str] = []
    for route in routes:
        if isinstance(route, Route) and route.methods:
            methods = sorted(route.methods - {"HEAD"}, key=lambda m: _METHOD_ORDER.get(m, 9))
            listed.extend(f"{method} {route.path_format}" for method in methods)
        elif isinstance(route, WebSocketRoute):
            listed.append(f"WEBSOCKET {route.path_format}")
    return listed


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, exc.detail, headers=exc.headers)


def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    return error_response(422, "validation_failed", "Request validation failed", errors=exc.errors)


def _body_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return error_response(413, "payload_too_large", f"Body over {exc.limit} bytes")


def _catalog_full(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CatalogFull)
    return error_response(507, "storage_full", str(exc))


EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    HTTPException: _http_error,
    InvalidInput: _invalid_input,
    BodyTooLarge: _body_too_large,
    CatalogFull: _catalog_full,
}


def create_app(*, catalog: Catalog | None = None) -> Starlette:
    """A fresh demo app with its own in-memory catalog (seeded with a few items by default)."""
    routes: list[BaseRoute] = [
        Route("/hello", hello),
        Route("/health", health),
        *CatalogEndpoints(Catalog() if catalog is None else catalog).routes(),
        *streams.routes(),
        *ProbeEndpoints().routes(),
        *websocket.routes(),
    ]
    index_body = orjson.dumps({"service": SERVICE, "endpoints": ["GET /", *_endpoint_list(routes)]})

    async def index(request: Request) -> Response:
        """``GET /``: the service name and every endpoint."""
        return Response(index_body, media_type="application/json")

    return DemoApp(routes=[Route("/", index), *routes], exception_handlers=EXCEPTION_HANDLERS)

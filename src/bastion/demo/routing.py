"""One route per resource path, dispatching on the method, so 405 answers list every method."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Endpoint", "resource"]

Endpoint = Callable[[Request], Awaitable[Response]]


def resource(path: str, **handlers: Endpoint) -> Route:
    """A route for ``path`` whose handler is chosen by method (``GET=…, POST=…``).

    ``HEAD`` is served by the ``GET`` handler (the server drops the body).
    """
    table = dict(handlers)
    if "GET" in table:
        table["HEAD"] = table["GET"]

    async def dispatch(request: Request) -> Response:
        return await table[request.method](request)

    return Route(path, dispatch, methods=list(table), name=path)

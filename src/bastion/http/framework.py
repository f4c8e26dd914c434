"""Integration with Starlette (and so FastAPI) apps wrapped in middleware mode.

Starlette answers an unhandled exception with its own plain-text 500 before the exception reaches
Bastion, and renders exceptions raised in routes by its own handlers. Wrapping an app therefore
registers handlers so that both come out as Bastion's problem+json: a :class:`BastionError`
raised in a route or dependency keeps its code, and an unexpected exception becomes a 500
``internal_error`` without detail (the outer error stage still logs it with the request id).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from bastion.http.problems import BastionError, problem_body, problem_headers

__all__ = ["adopt_error_handling"]


def _request_id(request: Request) -> str | None:
    state = request.scope.get("state", {}).get("bastion")
    return getattr(state, "request_id", None)


def _problem_response(request: Request, error: BastionError) -> Response:
    body = problem_body(error, _request_id(request))
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in problem_headers(error, body)}
    headers.pop("content-length", None)
    return Response(body, status_code=error.status, headers=headers)


async def _bastion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BastionError)
    return _problem_response(request, exc)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _problem_response(request, BastionError("internal_error"))


def adopt_error_handling(app: Any) -> None:
    """Register problem+json handlers on a Starlette/FastAPI app (keeping the app's own
    handlers for unexpected exceptions if it has any); other ASGI apps are left as they are."""
    if not isinstance(app, Starlette):
        return
    handlers = app.exception_handlers
    handlers.setdefault(BastionError, _bastion_error)
    if Exception not in handlers and 500 not in handlers:
        handlers[Exception] = _internal_error

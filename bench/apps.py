"""The apps of the middleware scenario, one factory each, served by ``uvicorn --factory``.

Every app answers ``GET /hello`` with ``Hello, world!`` as ``text/plain``:

- :func:`starlette_app` — bare Starlette, one route; the baseline.
- :func:`fastapi_app` — bare FastAPI, one route.
- :func:`typical_app` — the stack people assemble by hand: FastAPI, a slowapi limit on the route,
  Starlette's ``CORSMiddleware``, a ``BaseHTTPMiddleware`` adding security headers, and PyJWT
  HS256 verification of the ``Authorization: Bearer`` token in a dependency.
- :func:`bastion_app` — :func:`starlette_app` wrapped by ``Bastion(Settings()).wrap``; the
  settings come from the file named by ``$BASTION_CONFIG`` (see :func:`bastion_toml`).
- :func:`limits_app` — :func:`starlette_app` behind a small ASGI middleware making three
  ``limits.aio`` hits per request (the rate-limit scenario's comparison); strategy and storage
  from ``$BENCH_LIMITS_STRATEGY`` and ``$BENCH_LIMITS_STORAGE``.
- :func:`slowapi_app` — bare Starlette with three slowapi limits on the route; storage from
  ``$BENCH_LIMITS_STORAGE``.

:func:`raw_hello` is the bare ASGI terminal of the in-process microbenchmark.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse as FastApiPlainText
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
)
from limits.storage import storage_from_string
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import Bastion, BastionApp, Settings
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.observe.logging import configure_logging

__all__ = [
    "HELLO",
    "JWT_SECRET",
    "LIBRARY_LIMIT",
    "LIMITS_STORAGE_ENV",
    "LIMITS_STRATEGY_ENV",
    "PATH",
    "SLOWAPI_LIMITS",
    "TYPICAL_LIMIT",
    "bastion_app",
    "bastion_toml",
    "bearer_token",
    "configured_sections",
    "fastapi_app",
    "limits_app",
    "raw_hello",
    "slowapi_app",
    "starlette_app",
    "typical_app",
]

PATH = "/hello"
HELLO = "Hello, world!"
_HELLO_BYTES = HELLO.encode()

JWT_SECRET = "bastion-bench-hs256-secret-0123456789abcdef"
"""Shared by :func:`bearer_token` and the typical stack's verifier; a benchmark-only value."""
TYPICAL_LIMIT = "10000000/minute"
"""The slowapi limit on the typical stack's route: checked and counted on every request, but
high enough that one client at tens of thousands of requests per second is never refused."""
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def _hello(request: Request) -> Response:
    return PlainTextResponse(HELLO)


def starlette_app() -> Starlette:
    """Bare Starlette: one route, no middleware."""
    return Starlette(routes=[Route(PATH, _hello)])


def fastapi_app() -> FastAPI:
    """Bare FastAPI: one route, no middleware, no dependencies."""
    app = FastAPI()

    @app.get(PATH, response_class=FastApiPlainText)
    async def hello() -> str:
        return HELLO

    return app


def bearer_token(lifetime: float = 86400.0) -> str:
    """An HS256 token the typical stack accepts, valid for ``lifetime`` seconds."""
    now = int(time.time())
    claims = {"sub": "bench-user", "scope": "read", "iat": now, "exp": now + int(lifetime)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


class _SecurityHeaders(BaseHTTPMiddleware):
    """How security headers are usually added by hand: a ``BaseHTTPMiddleware``."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response


def typical_app() -> FastAPI:
    """FastAPI + slowapi + CORSMiddleware + BaseHTTPMiddleware + PyJWT bearer verification."""
    limiter = Limiter(key_func=get_remote_address)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["https://app.example.com"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    bearer = HTTPBearer()

    def claims(
        credentials: HTTPAuthorizationCredentials = Depends(bearer),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            decoded: dict[str, Any] = jwt.decode(
                credentials.credentials, JWT_SECRET, algorithms=["HS256"]
            )
        except jwt.PyJWTError:
            raise HTTPException(status_code=401, detail="invalid token") from None
        return decoded

    @app.get(PATH, response_class=FastApiPlainText)
    @limiter.limit(TYPICAL_LIMIT)
    async def hello(request: Request, user: dict[str, Any] = Depends(claims)) -> str:  # noqa: B008
        return HELLO

    return app


def bastion_app() -> BastionApp:
    """:func:`starlette_app` behind Bastion, configured from ``$BASTION_CONFIG``.

    Logging is configured the way ``bastion serve`` does it (JSON lines on standard output), so
    the access log costs what it costs in production; the benchmark sends stdout to /dev/null.
    """
    settings = Settings()
    configure_logging(settings.logging)
    return Bastion(settings).wrap(starlette_app())


LIMITS_STRATEGY_ENV = "BENCH_LIMITS_STRATEGY"
"""``moving-window`` or ``fixed-window``: the ``limits.aio`` strategy of :func:`limits_app`."""
LIMITS_STORAGE_ENV = "BENCH_LIMITS_STORAGE"
"""``memory://`` or ``redis://host:port``: the storage of :func:`limits_app` and
:func:`slowapi_app`."""
LIBRARY_LIMIT = "100000/second"
"""Each of :func:`limits_app`'s three limits: never reached by one client at tens of thousands
of requests per second. Per second, because a moving window keeps one entry per request within
its window (a per-minute limit would hold hundreds of thousands)."""
SLOWAPI_LIMITS = "100000/second;6000000/minute;360000000/hour"
"""slowapi's three limits on the route: the same rate at three granularities (slowapi counts
identical limits of one route in one counter)."""
_LIMIT_NAMES = ("global", "api", "reads")


def _too_many() -> Response:
    return PlainTextResponse("Too Many Requests", status_code=429)


class _LimitsMiddleware:
    """How ``limits.aio`` is used without a framework integration: one ``hit`` per limit, keyed
    by the client address, before the app."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, item: RateLimitItem) -> None:
        self.app = app
        self._hit = limiter.hit
        self._item = item

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            address = client[0] if client else "unknown"
            for name in _LIMIT_NAMES:
                if not await self._hit(self._item, name, address):
                    await _too_many()(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _limits_storage_uri(asynchronous: bool) -> str:
    uri = os.environ.get(LIMITS_STORAGE_ENV, "memory://")
    return f"async+{uri}" if asynchronous else uri


def limits_app() -> ASGIApp:
    """:func:`starlette_app` behind three ``limits.aio`` limits (strategy and storage from the
    environment; Redis through redis-py, the client Bastion uses)."""
    uri = _limits_storage_uri(asynchronous=True)
    options = {"implementation": "redispy"} if "redis" in uri else {}
    storage = storage_from_string(uri, **options)
    strategy = os.environ.get(LIMITS_STRATEGY_ENV, "moving-window")
    limiter: RateLimiter
    if strategy == "moving-window":
        limiter = MovingWindowRateLimiter(storage)
    elif strategy == "fixed-window":
        limiter = FixedWindowRateLimiter(storage)
    else:
        raise ValueError(f"{LIMITS_STRATEGY_ENV} must be moving-window or fixed-window")
    return _LimitsMiddleware(starlette_app(), limiter, parse(LIBRARY_LIMIT))


def slowapi_app() -> Starlette:
    """Bare Starlette with slowapi's three limits on the route (fixed window, its default)."""
    limiter = Limiter(key_func=get_remote_address, storage_uri=_limits_storage_uri(False))

    @limiter.limit(SLOWAPI_LIMITS)
    async def hello(request: Request) -> Response:
        return PlainTextResponse(HELLO)

    app = Starlette(routes=[Route(PATH, hello)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


async def raw_hello(scope: Scope, receive: Receive, send: Send) -> None:
    """The bare ASGI terminal: fresh messages and header list on each call (stages mutate them)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"13"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _HELLO_BYTES})


_GLOBAL_SHADOW = """
[[ratelimit.policies]]
name = "global"
key = "ip"
algorithm = "gcra"
limit = 1200
period = "1m"
burst = 200
mode = "shadow"
"""
"""The built-in ``global`` policy in shadow mode (DESIGN.md §4): one client at thousands of
requests per second is counted, never refused, so its cost is still measured."""


def _optional_sections() -> list[str]:
    """Sections of capabilities that this version of Bastion may not have yet: unknown keys are
    configuration errors, so each is written only when its section exists."""
    sections: list[str] = []
    if "ratelimit" in Settings.model_fields:
        sections.append(_GLOBAL_SHADOW)
    return sections


def bastion_toml(database: Path, *, access_log: bool = True) -> str:
    """The benchmark's Bastion configuration: defaults everywhere except a throwaway SQLite
    store, the access log switch, and the sections of :func:`_optional_sections`."""
    lines = [
        "[store]",
        f'database_url = "sqlite+aiosqlite:///{database}"',
        "",
        "[logging]",
        f"access_log = {'true' if access_log else 'false'}",
    ]
    return "\n".join(lines) + "\n" + "".join(_optional_sections())


def configured_sections() -> list[str]:
    """Names of the optional sections :func:`bastion_toml` writes (for the report)."""
    return ["ratelimit (global policy in shadow mode)"] if _optional_sections() else []

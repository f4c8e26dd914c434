"""Endpoints that exist to exercise a gateway: latency, statuses, headers, cookies, caching."""

from __future__ import annotations

import hashlib
import re
from http import HTTPStatus

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.demo.responses import OrjsonResponse
from bastion.demo.validation import FieldError, InvalidInput, query_float

__all__ = ["MAX_CACHE_KEY", "MAX_DELAY", "ProbeEndpoints"]

MAX_DELAY = 30.0
"""Longest ``/slow`` delay in seconds (422 above)."""

MAX_CACHE_KEY = 99_999
"""Largest ``n`` of ``/cache/{n}``; bounds the per-key hit counters."""

NO_BODY_STATUSES = frozenset({204, 205, 304})

# Headers RFC 9110 requires (or strongly expects) with these statuses, so a status probe looks
# like a real response of its kind to whatever sits in front.
STATUS_HEADERS: dict[int, dict[str, str]] = {
    **{code: {"location": "/"} for code in (301, 302, 303, 307, 308)},
    401: {"www-authenticate": 'Bearer realm="bastion-demo"'},
    405: {"allow": "GET, HEAD"},
}

COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
COOKIE_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*")
"""RFC 6265 ``token`` and ``cookie-octet*``: values that need no quoting."""


def _combined_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    combined: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        if name in combined:
            separator = "; " if name == "cookie" else ", "
            combined[name] = combined[name] + separator + text
        else:
            combined[name] = text
    return combined


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` against our strong ``etag``."""
    if if_none_match.strip() == "*":
        return True
    return any(
        candidate.strip().removeprefix("W/") == etag for candidate in if_none_match.split(",")
    )


class ProbeEndpoints:
    """Probe endpoints; the only state is the ``/cache`` hit counters of this app instance."""

    def __init__(self) -> None:
        self._cache_hits: dict[int, int] = {}

    def routes(self) -> list[Route]:
        """Routes for ``/slow``, ``/status/{code}``, ``/headers``, ``/cookies*``, ``/cache/{n}``."""
        return [
            Route("/slow", self.slow),
            Route("/status/{code:int}", self.status),
            Route("/headers", self.headers),
            Route("/cookies", self.cookies),
            Route("/cookies/set", self.set_cookies),
            Route("/cache/{n:int}", self.cache),
        ]

    async def slow(self, request: Request) -> Response:
        """``GET /slow?delay=0.5``: answer after ``delay`` seconds (0 to 30)."""
        delay = query_float(request, "delay", default=0.5, minimum=0.0, maximum=MAX_DELAY)
        await anyio.sleep(delay)
        return OrjsonResponse({"delay": delay})

    async def status(self, request: Request) -> Response:
        """``GET /status/{code}``: a final response with that status (200 to 599)."""
        code: int = request.path_params["code"]
        if not 200 <= code <= 599:
            # 1xx are interim responses: an ASGI app cannot send one as its final answer.
            msg = "Status should be between 200 and 599"
            raise InvalidInput([{"loc": ["path", "code"], "msg": msg, "type": "out_of_range"}])
        headers = STATUS_HEADERS.get(code)
        if code in NO_BODY_STATUSES:
            return Response(status_code=code, headers=headers)
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = ""
        return OrjsonResponse({"status": code, "reason": reason}, status_code=code, headers=headers)

    async def headers(self, request: Request) -> Response:
        """``GET /headers``: the request as the demo received it (after any proxy)."""
        scope = request.scope
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        client = scope.get("client")
        return OrjsonResponse(
            {
                "method": request.method,
                "path": scope["path"],
                "query": scope["query_string"].decode("latin-1"),
                "http_version": scope.get("http_version"),
                "scheme": scope.get("scheme"),
                "client": list(client) if client else None,
                "headers": _combined_headers(raw),
                "raw_headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw],
            }
        )

    async def cookies(self, request: Request) -> Response:
        """``GET /cookies``: the cookies the request carried."""
        return OrjsonResponse({"cookies": request.cookies})

    async def set_cookies(self, request: Request) -> Response:
        """``GET /cookies/set?name=value``: one ``Set-Cookie`` per query parameter."""
        pairs = request.query_params.multi_items()
        errors: list[FieldError] = [
            {"loc": ["query", name], "msg": "Not a valid cookie name or value", "type": "cookie"}
            for name, value in pairs
            if not COOKIE_NAME.fullmatch(name) or not COOKIE_VALUE.fullmatch(value)
        ]
        if not pairs:
            errors.append(
                {"loc": ["query"], "msg": "Give at least one name=value", "type": "missing"}
            )
        if errors:
            raise InvalidInput(errors)
        response = OrjsonResponse({"set": dict(pairs)})
        for name, value in pairs:
            cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax"
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        return response

    async def cache(self, request: Request) -> Response:
        """``GET /cache/{n}``: a cacheable answer with a strong ``ETag``; honours ``If-None-Match``.

        ``X-Demo-Hits`` counts the requests for ``n`` this app has served (304s included), so a
        test can tell a response a cache served from one the demo produced.
        """
        n: int = request.path_params["n"]
        if n > MAX_CACHE_KEY:
            raise InvalidInput(
                [{"loc": ["path", "n"], "msg": f"n should be <= {MAX_CACHE_KEY}", "type": "le"}]
            )
        hits = self._cache_hits.get(n, 0) + 1
        self._cache_hits[n] = hits
        body = orjson.dumps({"n": n, "square": n * n, "text": f"cacheable resource {n}"})
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers = {"cache-control": "public, max-age=60", "etag": etag, "x-demo-hits": str(hits)}
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type="application/json")

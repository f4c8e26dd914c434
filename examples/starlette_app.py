"""A Starlette app protected by Bastion in middleware mode.

Run:  uvicorn examples.starlette_app:app --port 8000
Then: curl -i localhost:8000/hello ; curl -i localhost:8000/_bastion/health
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import Bastion, Settings
from bastion.http.state import state_of
from bastion.pipeline.config import CorsConfig, LimitsConfig


async def hello(request: Request) -> Response:
    state = state_of(request.scope)
    return JSONResponse(
        {"hello": "world", "request_id": state.request_id, "client_ip": state.client_ip}
    )


async def upload(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():  # Bastion refuses the stream past the body limit
        size += len(chunk)
    return JSONResponse({"received": size})


inner = Starlette(routes=[Route("/hello", hello), Route("/upload", upload, methods=["POST"])])

settings = Settings(
    cors=CorsConfig(origins=["http://localhost:3000"]),
    limits=LimitsConfig(max_body_bytes="1MiB"),
)
app = Bastion(settings).wrap(inner)

"""Request ids: accepted when well-formed, generated otherwise, echoed, bound to the state."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from bastion.http.asgi import ASGIApp
from bastion.pipeline.request_id import valid_request_id
from stage_harness import around, make_deps


def client(app: ASGIApp) -> TestClient:
    deps = make_deps()
    return TestClient(around(lambda a, d: a, app, deps))


@pytest.mark.parametrize(
    ("incoming", "accepted"),
    [
        ("abc-123", True),
        ("A.b_c-9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("has space", False),
        ("semi;colon", False),
        ("new\\nline", False),
        ("<script>", False),
        ("ünïcode", False),
    ],
)
def test_incoming_id(echo_app: Starlette, incoming: str, accepted: bool) -> None:
    response = client(echo_app).get("/hello", headers={"X-Request-ID": incoming.encode("utf-8")})
    echoed = response.headers["x-request-id"]
    assert (echoed == incoming) is accepted
    assert valid_request_id(echoed.encode())


def test_generated_ids_are_unique(echo_app: Starlette) -> None:
    c = client(echo_app)
    ids = {c.get("/hello").headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 32 for i in ids)


def test_error_responses_carry_the_id(echo_app: Starlette) -> None:
    response = client(echo_app).get("/boom", headers={"X-Request-ID": "trace-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-1"
    assert response.json()["request_id"] == "trace-1"
    assert "secret internal detail" not in response.text

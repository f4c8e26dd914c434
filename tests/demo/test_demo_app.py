"""The demo app as a whole: index, /hello fast path, /health, JSON 404/405."""

from __future__ import annotations

from bastion.demo import create_app
from bastion.demo.app import SERVICE


def test_index_names_the_service_and_lists_every_endpoint(client):
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["service"] == SERVICE == "bastion-demo"
    endpoints = body["endpoints"]
    for expected in [
        "GET /",
        "GET /hello",
        "GET /health",
        "GET /items",
        "POST /items",
        "GET /items/{item_id}",
        "PUT /items/{item_id}",
        "PATCH /items/{item_id}",
        "DELETE /items/{item_id}",
        "POST /orders",
        "GET /orders",
        "GET /orders/{order_id}",
        "GET /slow",
        "GET /large",
        "GET /stream",
        "POST /echo",
        "GET /headers",
        "GET /status/{code}",
        "GET /cookies",
        "GET /cookies/set",
        "GET /cache/{n}",
        "WEBSOCKET /ws/echo",
    ]:
        assert expected in endpoints
    assert not any(entry.startswith("HEAD ") for entry in endpoints)


def test_hello_is_plain_text(client):
    response = client.get("/hello")

    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == "13"


async def test_hello_fast_path_sends_two_messages_with_fresh_headers(asgi_call):
    app = create_app()

    first = await asgi_call(app, "GET", "/hello")
    first.messages[0]["headers"].append((b"x-added-by-middleware", b"1"))
    second = await asgi_call(app, "GET", "/hello")

    assert [m["type"] for m in second.messages] == ["http.response.start", "http.response.body"]
    assert second.status == 200
    assert second.body == b"Hello, world!"
    assert b"x-added-by-middleware" not in second.headers


def test_hello_head_goes_through_routing(client):
    response = client.head("/hello")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "13"


def test_hello_refuses_other_methods_with_json_405(client):
    response = client.post("/hello")

    assert response.status_code == 405
    assert response.json() == {"error": "method_not_allowed", "detail": "Method Not Allowed"}
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_health(client):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_path_is_json_404(client):
    response = client.get("/no/such/path")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "not_found", "detail": "Not Found"}


def test_405_lists_every_method_of_the_resource(client):
    response = client.delete("/items")

    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}

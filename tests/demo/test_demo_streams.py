"""Streaming endpoints: /large in chunks, /stream paced, /echo chunk by chunk."""

from __future__ import annotations

import time

import orjson
import pytest

from bastion.demo import create_app
from bastion.demo.streams import CHUNK_SIZE, MAX_LARGE


def test_large_defaults_to_one_mebibyte_of_text_in_chunks(client):
    with client.stream("GET", "/large") as response:
        chunks = list(response.iter_raw())

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(1024 * 1024)
    assert [len(chunk) for chunk in chunks] == [CHUNK_SIZE] * (1024 * 1024 // CHUNK_SIZE)
    assert b"".join(chunks).count(b"\n") == 1024 * 1024 // 64


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 300_000])
def test_large_is_exactly_the_requested_size(client, size):
    response = client.get("/large", params={"size": size})

    assert response.status_code == 200
    assert len(response.content) == size
    assert response.headers["content-length"] == str(size)


@pytest.mark.parametrize("size", [11, 12, CHUNK_SIZE + 11, 200_000])
def test_large_json_is_one_valid_document_of_the_requested_size(client, size):
    response = client.get("/large", params={"size": size, "format": "json"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert len(response.content) == size
    assert len(orjson.loads(response.content)["data"]) == size - 11


@pytest.mark.parametrize(
    ("query", "name"),
    [
        pytest.param({"size": MAX_LARGE + 1}, "size", id="over-64MiB"),
        pytest.param({"size": -1}, "size", id="negative"),
        pytest.param({"size": "big"}, "size", id="not-int"),
        pytest.param({"size": 10, "format": "json"}, "size", id="json-too-small"),
        pytest.param({"format": "xml"}, "format", id="unknown-format"),
    ],
)
def test_large_refuses_bad_parameters(client, query, name):
    response = client.get("/large", params=query)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", name]


def test_stream_chunks_arrive_separately_and_paced(client):
    arrivals = []
    with client.stream("GET", "/stream", params={"chunks": 3, "interval": 0.2}) as response:
        start = time.monotonic()
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - start, chunk))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "content-length" not in response.headers
    assert [chunk for _, chunk in arrivals] == [b"chunk 1/3\n", b"chunk 2/3\n", b"chunk 3/3\n"]
    assert arrivals[0][0] < 0.15
    assert arrivals[1][0] - arrivals[0][0] >= 0.15
    assert arrivals[2][0] - arrivals[1][0] >= 0.15


def test_stream_defaults_to_five_chunks(client):
    assert client.get("/stream", params={"interval": 0}).text.count("chunk ") == 5


@pytest.mark.parametrize(
    "query",
    [
        {"chunks": 0},
        {"chunks": 1001},
        {"interval": -0.1},
        {"interval": 11},
        {"interval": "nan"},
        {"interval": "soon"},
    ],
)
def test_stream_refuses_bad_parameters(client, query):
    response = client.get("/stream", params=query)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", next(iter(query))]


def test_echo_returns_the_body_with_its_content_type(client):
    response = client.post("/echo", content=b'{"a": 1}', headers={"content-type": "text/x-demo"})

    assert response.status_code == 200
    assert response.content == b'{"a": 1}'
    assert response.headers["content-type"] == "text/x-demo"
    assert "content-length" not in response.headers


def test_echo_of_nothing_is_an_empty_octet_stream(client):
    response = client.post("/echo")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "application/octet-stream"


def test_echo_only_accepts_post(client):
    assert client.get("/echo").status_code == 405


async def test_echo_sends_each_chunk_before_the_next_one_arrives():
    app = create_app()
    parts = [b"first ", b"", b"second ", b"third"]
    sent = []
    echoed_when_asked = []
    position = 0

    async def receive():
        nonlocal position
        echoed_when_asked.append(b"".join(m.get("body", b"") for m in sent[1:]))
        body = parts[position]
        position += 1
        return {"type": "http.request", "body": body, "more_body": position < len(parts)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/x-ndjson")],
    }
    await app(scope, receive, send)

    assert echoed_when_asked == [b"", b"first ", b"first ", b"first second "]
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/x-ndjson")],
    }
    bodies = [(m["body"], m["more_body"]) for m in sent[1:]]
    assert bodies == [(b"first ", True), (b"second ", True), (b"third", False)]


async def test_echo_stops_when_the_client_disconnects():
    app = create_app()
    messages = iter(
        [
            {"type": "http.request", "body": b"partial", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "root_path": "", "headers": []}
    await app(scope, receive, send)

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"partial", "more_body": True}

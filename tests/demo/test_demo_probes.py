"""Probe endpoints: /slow, /status, /headers, /cookies, /cache."""

from __future__ import annotations

import time

import pytest

from bastion.demo.probes import MAX_CACHE_KEY


def test_slow_waits_the_requested_delay(client):
    start = time.monotonic()
    response = client.get("/slow", params={"delay": 0.2})
    elapsed = time.monotonic() - start

    assert response.status_code == 200
    assert response.json() == {"delay": 0.2}
    assert elapsed >= 0.2


def test_slow_defaults_to_half_a_second(client):
    start = time.monotonic()
    response = client.get("/slow")

    assert response.json() == {"delay": 0.5}
    assert time.monotonic() - start >= 0.5


@pytest.mark.parametrize(
    ("delay", "error_type"),
    [
        ("30.01", "out_of_range"),
        ("-1", "out_of_range"),
        ("inf", "finite_number"),
        ("nan", "finite_number"),
        ("later", "float_parsing"),
    ],
)
def test_slow_refuses_bad_delays(client, delay, error_type):
    response = client.get("/slow", params={"delay": delay})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["loc"], error["type"]) == (["query", "delay"], error_type)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(200, "OK"), (201, "Created"), (404, "Not Found"), (418, "I'm a Teapot"), (599, "")],
)
def test_status_answers_with_the_code_and_a_json_body(client, code, reason):
    response = client.get(f"/status/{code}")

    assert response.status_code == code
    assert response.json() == {"status": code, "reason": reason}


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_status_server_errors_are_passed_as_answers(client, code):
    response = client.get(f"/status/{code}")

    assert response.status_code == code
    assert response.json()["status"] == code


@pytest.mark.parametrize("code", [204, 205, 304])
def test_status_without_content_has_no_body(client, code):
    response = client.get(f"/status/{code}")

    assert response.status_code == code
    assert response.content == b""
    assert "content-type" not in response.headers


@pytest.mark.parametrize(
    ("code", "header", "value"),
    [
        (301, "location", "/"),
        (302, "location", "/"),
        (307, "location", "/"),
        (401, "www-authenticate", 'Bearer realm="bastion-demo"'),
        (405, "allow", "GET, HEAD"),
    ],
)
def test_status_carries_the_headers_its_code_requires(client, code, header, value):
    response = client.get(f"/status/{code}", follow_redirects=False)

    assert response.status_code == code
    assert response.headers[header] == value


@pytest.mark.parametrize("code", [100, 199, 600, 999])
def test_status_outside_final_range_is_422(client, code):
    response = client.get(f"/status/{code}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "code"]


def test_headers_shows_the_request_as_received(client):
    response = client.get(
        "/headers?a=1&b=2",
        headers=[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Dup", "one"),
            ("X-Dup", "two"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
        ],
    )

    assert response.status_code == 200
    body = response.json()
    assert body["method"] == "GET"
    assert body["path"] == "/headers"
    assert body["query"] == "a=1&b=2"
    assert body["http_version"] == "1.1"
    assert body["scheme"] == "http"
    assert body["client"] == ["testclient", 50000]
    assert body["headers"]["x-forwarded-for"] == "203.0.113.7"
    assert body["headers"]["x-dup"] == "one, two"
    assert body["headers"]["cookie"] == "a=1; b=2"
    assert ["x-dup", "one"] in body["raw_headers"]
    assert body["raw_headers"].index(["x-dup", "one"]) + 1 == body["raw_headers"].index(
        ["x-dup", "two"]
    )


def test_cookies_set_sends_one_set_cookie_per_parameter_and_they_come_back(client):
    response = client.get("/cookies/set", params=[("session", "abc123"), ("theme", "dark")])

    assert response.status_code == 200
    assert response.json() == {"set": {"session": "abc123", "theme": "dark"}}
    assert response.headers.get_list("set-cookie") == [
        "session=abc123; Path=/; HttpOnly; SameSite=Lax",
        "theme=dark; Path=/; HttpOnly; SameSite=Lax",
    ]
    assert client.get("/cookies").json() == {"cookies": {"session": "abc123", "theme": "dark"}}


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="nothing"),
        pytest.param("bad%20name=1", id="space-in-name"),
        pytest.param("name=a%3Bb", id="semicolon-in-value"),
        pytest.param("name=%22q%22", id="quote-in-value"),
        pytest.param("=v", id="empty-name"),
    ],
)
def test_cookies_set_refuses_what_would_need_quoting(client, query):
    response = client.get(f"/cookies/set?{query}")

    assert response.status_code == 422
    assert "set-cookie" not in response.headers


def test_cache_is_cacheable_with_a_stable_strong_etag(client):
    first = client.get("/cache/7")
    second = client.get("/cache/7")

    assert first.status_code == second.status_code == 200
    assert first.headers["cache-control"] == "public, max-age=60"
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert second.headers["etag"] == etag
    assert first.content == second.content
    assert first.json()["n"] == 7
    assert (first.headers["x-demo-hits"], second.headers["x-demo-hits"]) == ("1", "2")
    assert client.get("/cache/8").headers["etag"] != etag
    assert client.get("/cache/8").headers["x-demo-hits"] == "2"


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", '"other", {etag}', "*"],
)
def test_cache_revalidation_answers_304(client, if_none_match):
    etag = client.get("/cache/3").headers["etag"]

    response = client.get("/cache/3", headers={"if-none-match": if_none_match.format(etag=etag)})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "public, max-age=60"


def test_cache_with_a_stale_etag_answers_200(client):
    response = client.get("/cache/3", headers={"if-none-match": '"stale"'})

    assert response.status_code == 200
    assert response.json()["n"] == 3


def test_cache_key_is_bounded(client):
    assert client.get(f"/cache/{MAX_CACHE_KEY}").status_code == 200
    response = client.get(f"/cache/{MAX_CACHE_KEY + 1}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "n"]

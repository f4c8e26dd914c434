"""The location splitter: what is inspected where, parsed once, cut to the limits, never
raising on any input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.inspect.config import InspectConfig
from bastion.inspect.locations import MAX_JSON_DEPTH, Budget, locations
from bastion.inspect.request import InspectionRequest

DEFAULT = InspectConfig()


def found(
    request: InspectionRequest, config: InspectConfig = DEFAULT, budget: Budget | None = None
) -> list[tuple[str, str]]:
    return [(location.label(), value.raw) for location, value in locations(request, config, budget)]


def get(target: str, *headers: tuple[str, str]) -> InspectionRequest:
    return InspectionRequest("GET", target, headers, b"")


def post(content_type: str, body: bytes, target: str = "/p") -> InspectionRequest:
    headers = (("Content-Type", content_type),) if content_type else ()
    return InspectionRequest("POST", target, headers, body)


def test_path_and_query_names_and_values_undecoded() -> None:
    assert found(get("/a/../b%2F?id=1%27&q=&flag&%3Cn%3E=v")) == [
        ("path", "/a/../b%2F"),
        ("query_name", "id"),
        ("query:id", "1%27"),
        ("query_name", "q"),
        ("query_name", "flag"),
        ("query_name", "%3Cn%3E"),
        ("query:<n>", "v"),
    ]


def test_cookies_and_selected_headers_only() -> None:
    request = get(
        "/",
        ("Cookie", "sid=abc; theme=<b>"),
        ("User-Agent", "curl/8"),
        ("Authorization", "Bearer secret"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Referer", "http://x/"),
        ("Accept", "*/*"),
    )
    assert found(request)[1:] == [
        ("cookie_name", "sid"),
        ("cookie:sid", "abc"),
        ("cookie_name", "theme"),
        ("cookie:theme", "<b>"),
        ("header:user-agent", "curl/8"),
        ("header:x-forwarded-for", "10.0.0.1"),
        ("header:referer", "http://x/"),
    ]


def test_configured_headers() -> None:
    config = InspectConfig(headers=["Accept", "X-Custom-*"])
    request = get("/", ("User-Agent", "u"), ("accept", "a"), ("X-Custom-Id", "c"))
    assert found(request, config)[1:] == [("header:accept", "a"), ("header:x-custom-id", "c")]


def test_form_fields() -> None:
    body = b"name=O%27Brien&bio=%3Cb%3E+hi&empty="
    assert found(post("application/x-www-form-urlencoded", body))[1:] == [
        ("form_name", "name"),
        ("form:name", "O%27Brien"),
        ("form_name", "bio"),
        ("form:bio", "%3Cb%3E+hi"),
        ("form_name", "empty"),
    ]


def test_multipart_values_names_and_filenames_not_file_contents() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nHello <b>\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="../a.php"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n<?php system($_GET[1]); ?>\r\n"
        b"--XyZ--\r\n"
    )
    assert found(post("multipart/form-data; boundary=XyZ", body))[1:] == [
        ("multipart_name", "title"),
        ("multipart:title", "Hello <b>"),
        ("multipart_name", "file"),
        ("filename:file", "../a.php"),
    ]


def test_multipart_without_boundary_is_text() -> None:
    assert found(post("multipart/form-data", b"<x>"))[1:] == [("body", "<x>")]


def test_json_keys_and_string_leaves_with_dotted_names() -> None:
    body = orjson.dumps({"user": {"bio": "<b>", "age": 3, "tags": ["a", {"k": "v"}]}, "ok": True})
    assert found(post("application/json", body))[1:] == [
        ("json_key", "user"),
        ("json_key", "ok"),
        ("json_key:user", "bio"),
        ("json_key:user", "age"),
        ("json_key:user", "tags"),
        ("json:user.bio", "<b>"),
        ("json:user.tags", "a"),
        ("json_key:user.tags", "k"),
        ("json:user.tags.k", "v"),
    ]


def test_json_deeper_than_the_limit_is_inspected_as_text() -> None:
    deep = "[" * (MAX_JSON_DEPTH + 5) + '"<x>"' + "]" * (MAX_JSON_DEPTH + 5)
    assert found(post("application/vnd.api+json", deep.encode()))[1:] == [("body", deep)]


def test_invalid_json_is_text() -> None:
    assert found(post("application/json", b'{"a": <script>'))[1:] == [("body", '{"a": <script>')]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_other_text_bodies_are_one_location(content_type: str) -> None:
    assert found(post(content_type, "caf\xe9 ' or 1=1".encode()))[1:] == [("body", "café ' or 1=1")]


def test_invalid_utf8_body_keeps_every_byte_as_latin1() -> None:
    assert found(post("text/plain", b"\xff<\xfe"))[1:] == [("body", "\xff<\xfe")]


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "video/mp4"])
def test_binary_bodies_are_not_inspected(content_type: str) -> None:
    assert found(post(content_type, b"<script>"))[1:] == []


def test_a_location_is_cut_to_max_location_bytes() -> None:
    config = InspectConfig(max_location_bytes=64, max_request_bytes=1024)
    budget = Budget.for_config(config)
    values = found(get("/?q=" + "a" * 100), config, budget)
    assert values[-1] == ("query:q", "a" * 64)
    assert budget.truncated


def test_the_request_budget_stops_inspection_and_says_so() -> None:
    config = InspectConfig(max_location_bytes=64, max_request_bytes=100)
    budget = Budget.for_config(config)
    values = found(get("/?" + "&".join(f"k{i}=" + "v" * 30 for i in range(10))), config, budget)
    assert sum(len(value) for _, value in values) == 100
    assert budget.truncated


def test_max_locations() -> None:
    config = InspectConfig(max_locations=5)
    budget = Budget.for_config(config)
    assert (
        len(
            found(
                post("application/json", orjson.dumps({str(i): "" for i in range(50)})),
                config,
                budget,
            )
        )
        == 5
    )
    assert budget.truncated


def test_a_body_larger_than_the_budget_is_a_text_prefix() -> None:
    config = InspectConfig(max_location_bytes=64, max_request_bytes=64)
    budget = Budget.for_config(config)
    values = found(
        post("application/json", b'{"a": "' + b"x" * 200 + b'"}', target="/"), config, budget
    )
    assert values[1][0] == "body"
    assert len(values[1][1]) == 63
    assert budget.truncated


def test_untruncated_request_leaves_budget_flag_clear() -> None:
    budget = Budget.for_config(DEFAULT)
    found(post("application/json", b'{"a": "b"}'), DEFAULT, budget)
    assert not budget.truncated


def test_sensitive_fields_are_never_yielded() -> None:
    config = InspectConfig(sensitive_fields=["Card_Number"])
    body = orjson.dumps({"card_number": "4111", "billing": {"card_number": "4111"}, "x": "y"})
    values = found(post("application/json", body), config)
    assert "4111" not in [value for _, value in values]
    assert ("json:x", "y") in values
    query = found(get("/?card_number=4111&q=1"), config)
    assert [value for _, value in query].count("4111") == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"username": "a", "password": "\' or 1=1--", "new_password": "x"}'),
        ("application/x-www-form-urlencoded", b"username=a&password=%27+or+1%3D1--&new_password=x"),
    ],
)
def test_auth_password_fields_are_never_yielded(content_type: str, body: bytes) -> None:
    values = [value for _, value in found(post(content_type, body, "/_bastion/auth/login"))]
    assert "a" in values
    assert not any("1" in value or value == "x" for value in values)
    elsewhere = [value for _, value in found(post(content_type, body, "/api/login"))]
    assert any("1" in value for value in elsewhere)


REQUEST_PARTS = st.tuples(
    st.sampled_from(["GET", "POST", "|GET", ""]),
    st.text(max_size=200),
    st.lists(
        st.tuples(
            st.sampled_from(["Cookie", "User-Agent", "X-Forwarded-For", "A"]), st.text(max_size=100)
        ),
        max_size=5,
    ),
    st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            'multipart/form-data; boundary=""',
            "text/plain",
            "",
        ]
    ),
    st.binary(max_size=2000)
    | st.recursive(
        st.none() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=30,
    ).map(orjson.dumps),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    parts=REQUEST_PARTS,
    limits=st.tuples(st.integers(64, 300), st.integers(0, 600), st.integers(1, 20)),
)
def test_never_raises_and_stays_within_the_limits(
    parts: tuple[str, str, list[tuple[str, str]], str, bytes], limits: tuple[int, int, int]
) -> None:
    method, target, headers, content_type, body = parts
    per_location, extra, count = limits
    config = InspectConfig(
        max_location_bytes=per_location, max_request_bytes=per_location + extra, max_locations=count
    )
    request = InspectionRequest(method, target, (*headers, ("Content-Type", content_type)), body)
    values = found(request, config)
    assert len(values) <= count
    assert all(0 < len(value) <= per_location for _, value in values)
    assert sum(len(value) for _, value in values) <= per_location + extra


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_raw_requests_never_raise(data: bytes) -> None:
    request = InspectionRequest.from_raw(
        b"POST /x HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n" + data
    )
    assert sum(len(value) for _, value in found(request)) <= DEFAULT.max_request_bytes


def test_cookies_come_before_selected_headers_whatever_the_field_order() -> None:
    request = get("/", ("User-Agent", "ua"), ("COOKIE", "a=1"), ("Referer", "r"), ("cookie", "b=2"))
    assert found(request) == [
        ("path", "/"),
        ("cookie_name", "a"),
        ("cookie:a", "1"),
        ("cookie_name", "b"),
        ("cookie:b", "2"),
        ("header:user-agent", "ua"),
        ("header:referer", "r"),
    ]


def test_each_configuration_selects_its_own_headers_and_sensitive_fields() -> None:
    # What is derived from a configuration is memoised per configuration object.
    request = get("/?card=4111&q=x", ("X-Token", "t"), ("User-Agent", "ua"))
    plain = found(request, InspectConfig(headers=["x-token"]))
    assert ("header:x-token", "t") in plain
    assert ("header:user-agent", "ua") not in plain
    assert ("query:card", "4111") in plain
    strict = found(request, InspectConfig(sensitive_fields=["card"]))
    assert ("query:card", "4111") not in strict
    assert ("header:user-agent", "ua") in strict
    assert ("header:x-token", "t") not in strict


def test_locations_are_equal_values_whether_or_not_shared() -> None:
    first = [location for location, _ in locations(get("/?id=1"), DEFAULT)]
    second = [location for location, _ in locations(get("/?id=2"), DEFAULT)]
    assert first == second
    assert all(a is b for a, b in zip(first, second, strict=True))

"""InspectionRequest: the undecoded request built from an ASGI scope, a corpus record or raw
bytes, and its accessors."""

from __future__ import annotations

import pytest

from bastion.inspect.request import FORM_URLENCODED, InspectionRequest


def make(
    target: str = "/", headers: tuple[tuple[str, str], ...] = (), body: bytes = b""
) -> InspectionRequest:
    return InspectionRequest("GET", target, headers, body)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", ""),
        ("/a%2Fb?x=%27&y", "/a%2Fb", "x=%27&y"),
        ("/a?b?c", "/a", "b?c"),
        ("/a#frag", "/a", ""),
        ("/a?q=1#frag", "/a", "q=1"),
        ("*", "*", ""),
    ],
)
def test_path_and_query_stay_undecoded(target: str, path: str, query: str) -> None:
    request = make(target)
    assert (request.path, request.query) == (path, query)


def test_headers_are_case_insensitive_in_order() -> None:
    request = make(headers=(("X-A", "1"), ("x-a", "2"), ("Other", "3")))
    assert request.header("x-A") == "1"
    assert request.header_values("X-A") == ["1", "2"]
    assert request.header("missing") is None
    assert request.header_values("missing") == []


@pytest.mark.parametrize(
    ("value", "media"),
    [
        ("Application/JSON; charset=utf-8", "application/json"),
        ("  text/plain  ", "text/plain"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("", ""),
    ],
)
def test_content_type_is_the_lowercased_media_type(value: str, media: str) -> None:
    assert make(headers=(("Content-Type", value),)).content_type == media


def test_no_content_type_is_empty() -> None:
    assert make().content_type == ""


def test_from_scope_prefers_raw_path_over_the_decoded_one() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/a/b",
        "raw_path": b"/a%2Fb",
        "query_string": b"q=%3Cscript%3E",
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-latin", "caf\xe9".encode("latin-1")),
        ],
    }
    request = InspectionRequest.from_scope(scope, b"{}")
    assert request.method == "POST"
    assert request.target == "/a%2Fb?q=%3Cscript%3E"
    assert request.content_type == "application/json"
    assert request.header("x-latin") == "caf\xe9"
    assert request.body == b"{}"


def test_from_scope_without_raw_path_or_query() -> None:
    request = InspectionRequest.from_scope({"type": "http", "path": "/x", "headers": []}, b"")
    assert (request.method, request.target, request.headers) == ("GET", "/x", ())


def test_from_record_defaults_and_form_content_type() -> None:
    record = {
        "id": "r",
        "method": "POST",
        "uri": "/post",
        "headers": {"Host": "h"},
        "body": "a=<b>",
    }
    request = InspectionRequest.from_record(record)
    assert request.content_type == FORM_URLENCODED
    assert request.body == b"a=<b>"
    assert request.header("host") == "h"
    bare = InspectionRequest.from_record({"id": "r", "headers": {}, "body": None})
    assert (bare.method, bare.target, bare.body, bare.header("content-type")) == (
        "GET",
        "/",
        b"",
        None,
    )


def test_from_record_keeps_an_explicit_content_type() -> None:
    record = {"uri": "/", "headers": {"Content-Type": "text/xml"}, "body": "<a/>"}
    assert InspectionRequest.from_record(record).content_type == "text/xml"


def test_from_record_parses_raw_bytes_as_latin1() -> None:
    raw = (
        "POST /p?x=1 HTTP/1.1\r\nHost: h\r\nX-Long: a\r\n  b\r\n"
        "Content-Type: text/plain\r\n\r\n\xac\xed\x00"
    )
    record: dict[str, object] = {
        "uri": "/ignored",
        "method": "GET",
        "headers": {},
        "body": None,
        "raw": raw,
    }
    request = InspectionRequest.from_record(record)
    assert (request.method, request.target) == ("POST", "/p?x=1")
    assert request.header("x-long") == "a b"
    assert request.body == b"\xac\xed\x00"
    assert request.raw == raw.encode("latin-1")


@pytest.mark.parametrize(
    ("data", "method", "target", "body"),
    [
        (b"", "GET", "/", b""),
        (b"GARBAGE", "GARBAGE", "/", b""),
        (b"GET /x HTTP/1.0\n\nrest", "GET", "/x", b"rest"),
        (b"GET /x HTTP/1.1\r\nHost:\r\n", "GET", "/x", b""),
        (b"\xff\xfe /\x00 X\r\n\r\n\r\n", "\xff\xfe", "/\x00", b"\r\n"),
    ],
)
def test_from_raw_is_lenient(data: bytes, method: str, target: str, body: bytes) -> None:
    request = InspectionRequest.from_raw(data)
    assert (request.method, request.target, request.body) == (method, target, body)


def test_from_raw_keeps_empty_and_repeated_headers() -> None:
    request = InspectionRequest.from_raw(b"GET / HTTP/1.1\r\nHost:\r\nA: 1\r\nA: 2\r\n\r\n")
    assert request.header("host") == ""
    assert request.header_values("a") == ["1", "2"]

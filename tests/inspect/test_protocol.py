"""Protocol anomaly checks: framing (Content-Length, Transfer-Encoding), NUL bytes, grammar."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Severity
from bastion.inspect.detectors.protocol import check_protocol
from bastion.inspect.request import InspectionRequest


def request(
    method: str = "POST",
    target: str = "/api/orders",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    raw: bytes | None = None,
) -> InspectionRequest:
    return InspectionRequest(method, target, (("Host", "api.example.com"), *headers), body, raw)


def rules(req: InspectionRequest, paranoia: int = 1) -> set[str]:
    return {match.rule for match in check_protocol(req, paranoia)}


JSON = ("Content-Type", "application/json")

ANOMALIES = [
    ("cl-not-a-number", request(headers=(("Content-Length", "3a"),)), "content-length-invalid"),
    ("cl-negative", request(headers=(("Content-Length", "-1"),)), "content-length-invalid"),
    (
        "cl-conflict",
        request(headers=(("Content-Length", "3"), ("Content-Length", "4"))),
        "content-length-conflict",
    ),
    ("cl-list-conflict", request(headers=(("Content-Length", "3, 4"),)), "content-length-conflict"),
    (
        "te-and-cl",
        request(headers=(("Content-Length", "4"), ("Transfer-Encoding", "chunked"))),
        "te-and-content-length",
    ),
    (
        "chunked-not-last",
        request(headers=(("Transfer-Encoding", "chunked, gzip"),)),
        "te-chunked-not-last",
    ),
    (
        "chunked-identity",
        request(headers=(("Transfer-Encoding", "chunked, identity"),)),
        "te-chunked-not-last",
    ),
    ("xchunked", request(headers=(("Transfer-Encoding", "xchunked"),)), "te-obfuscated"),
    (
        "chunked-twice",
        request(headers=(("Transfer-Encoding", "chunked, chunked"),)),
        "te-chunked-repeated",
    ),
    ("te-tab", request(headers=(("Transfer-Encoding", "\tchunked"),)), "te-obfuscated"),
    ("null-in-target", request(target="/file?name=a%00.php"), "null-byte"),
    ("null-in-header", request(headers=(("Referer", "x\x00y"),)), "null-byte"),
    ("method-grammar", request(method="GET /"), "method-invalid"),
    ("method-bracket", request(method="G(E)T"), "method-invalid"),
    ("get-with-body", request(method="GET", body=b"a=1"), "body-on-get"),
    (
        "head-with-te",
        request(method="HEAD", headers=(("Transfer-Encoding", "chunked"),)),
        "body-on-get",
    ),
    ("header-name-space", request(headers=(("X Forwarded", "1"),)), "header-name-invalid"),
    ("header-name-colon", request(headers=(("X:Y", "1"),)), "header-name-invalid"),
    ("header-value-newline", request(headers=(("X-A", "1\r\nX-B: 2"),)), "header-line-break"),
    (
        "content-type-two-types",
        request(
            headers=(
                ("Content-Type", 'application/x-www-form-urlencoded;boundary="application/json"'),
            )
        ),
        "content-type-confusion",
    ),
    (
        "content-type-conflict",
        request(headers=(JSON, ("Content-Type", "text/plain"))),
        "content-type-conflict",
    ),
    (
        "raw-te-space-before-colon",
        request(raw=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
        "header-name-invalid",
    ),
    (
        "raw-obs-fold",
        request(raw=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n"),
        "header-folding",
    ),
]


@pytest.mark.parametrize(
    ("req", "rule"), [case[1:] for case in ANOMALIES], ids=[case[0] for case in ANOMALIES]
)
def test_anomalies_match_at_paranoia_1(req: InspectionRequest, rule: str) -> None:
    matches = check_protocol(req, 1)
    assert f"protocol-{rule}" in {match.rule for match in matches}
    assert all(match.category == "protocol" and match.paranoia == 1 for match in matches)
    assert all(match.severity == Severity.CRITICAL for match in matches)


NORMAL = [
    ("plain-get", request(method="GET", target="/api/orders?page=2")),
    ("json-post", request(headers=(JSON, ("Content-Length", "2")), body=b"{}")),
    ("chunked-post", request(headers=(("Transfer-Encoding", "gzip, chunked"),))),
    ("get-zero-length", request(method="GET", headers=(("Content-Length", "0"),))),
    ("repeated-equal-length", request(headers=(("Content-Length", "2"), ("Content-Length", "2")))),
    (
        "multipart",
        request(headers=(("Content-Type", "multipart/form-data; boundary=----x1"),), body=b"--x"),
    ),
    ("options-star", request(method="OPTIONS", target="*")),
    (
        "json-charset",
        request(headers=(("Content-Type", "application/json; charset=utf-8"),), body=b"[1]"),
    ),
    (
        "body-with-nul-at-pl1",
        request(headers=(("Content-Type", "application/octet-stream"),), body=b"\x00\x01"),
    ),
]


@pytest.mark.parametrize(("req"), [case[1] for case in NORMAL], ids=[case[0] for case in NORMAL])
def test_normal_requests_are_silent_at_paranoia_1(req: InspectionRequest) -> None:
    assert rules(req) == set()


def test_weaker_checks_need_higher_paranoia() -> None:
    duplicate = request(headers=(("Content-Length", "2"), ("Content-Length", "2")))
    assert rules(duplicate, 2) == {"protocol-content-length-duplicate"}
    body_nul = request(headers=(("Content-Type", "application/octet-stream"),), body=b"a\x00")
    assert "protocol-null-byte" in rules(body_nul, 3)
    mismatch = request(headers=(JSON,), body=b"a=1&b=2")
    assert rules(mismatch, 1) == set()
    assert rules(mismatch, 2) == {"protocol-content-type-mismatch"}
    unknown = request(method="PROPFIND")
    assert rules(unknown, 2) == set()
    assert rules(unknown, 3) == {"protocol-method-unknown"}


def test_locations_name_the_field() -> None:
    matches = check_protocol(request(headers=(("Transfer-Encoding", "xchunked"),)), 1)
    assert {match.location for match in matches} == {Location("header", "transfer-encoding")}
    matches = check_protocol(request(method="GE T"), 1)
    assert {match.location for match in matches} == {Location("method")}


def test_corpus_record_with_raw_request() -> None:
    record: dict[str, object] = {
        "method": "GET",
        "uri": "/",
        "headers": {},
        "body": None,
        "raw": "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    }
    assert "protocol-body-on-get" in rules(InspectionRequest.from_record(record))


header_text = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=20),
    st.text(max_size=80),
    st.lists(st.tuples(header_text, header_text), max_size=8),
    st.binary(max_size=200),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.sampled_from([1, 2, 3, 4]),
)
def test_never_raises_and_is_deterministic(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    raw: bytes | None,
    paranoia: int,
) -> None:
    req = InspectionRequest(method, target, tuple(headers), body, raw)
    first = check_protocol(req, paranoia)
    assert first == check_protocol(req, paranoia)
    assert all(match.paranoia <= paranoia for match in first)


def test_large_request_completes() -> None:
    headers = tuple((f"X-H{i}", "chunked, " * 64) for i in range(256))
    raw = b"POST / HTTP/1.1\r\n" + b"X: y\r\n\t z\r\n" * 4096 + b"\r\n"
    req = InspectionRequest("POST", "/?" + "%00" * 20000, headers, b"\x00" * 65536, raw)
    started = time.perf_counter()
    check_protocol(req, 4)
    print(f"protocol large request: {(time.perf_counter() - started) * 1000:.1f} ms")


# The grammar checks use str/bytes methods instead of regular expressions; these pin the edges
# of the character classes they replaced.
@pytest.mark.parametrize(
    ("headers", "method", "expected"),
    [
        pytest.param((("X-Ok!#$%&'*+.^_`|~", "1"),), "GET", set(), id="every-tchar"),
        pytest.param((("Bad Name", "1"),), "GET", {"protocol-header-name-invalid"}, id="space"),
        pytest.param((("", "1"),), "GET", {"protocol-header-name-invalid"}, id="empty-name"),
        pytest.param((("Näme", "1"),), "GET", {"protocol-header-name-invalid"}, id="non-ascii"),
        pytest.param((("a:b", "1"),), "GET", {"protocol-header-name-invalid"}, id="colon"),
        pytest.param((), "G(T", {"protocol-method-invalid"}, id="method-paren"),
        pytest.param((), "GÉT", {"protocol-method-invalid"}, id="method-non-ascii"),
        pytest.param((), "get", set(), id="method-lower-case"),
        pytest.param((("Content-Length", "٣"),), "POST", {"protocol-content-length-invalid"},
                     id="length-arabic-digit"),
        pytest.param((("Content-Length", "1" * 20),), "POST", {"protocol-content-length-invalid"},
                     id="length-too-long"),
        pytest.param((("Content-Length", "1" * 19),), "POST", set(), id="length-19-digits"),
        pytest.param((("Content-Length", "+5"),), "POST", {"protocol-content-length-invalid"},
                     id="length-sign"),
        pytest.param((("Content-Type", "a/b/c"),), "POST", set(), id="media-two-slashes-pl1"),
        pytest.param((("Content-Type", "application/json; x=text/html"),), "POST",
                     {"protocol-content-type-confusion"}, id="smuggled-in-parameter"),
        pytest.param((("Content-Type", "application/json; charset=utf-8"),), "POST", set(),
                     id="parameter-without-slash"),
    ],
)  # fmt: skip
def test_grammar_edges(
    headers: tuple[tuple[str, str], ...], method: str, expected: set[str]
) -> None:
    assert rules(request(method=method, headers=headers)) == expected


@pytest.mark.parametrize(
    ("media_type", "invalid"),
    [("a/b/c", True), ("/json", True), ("application/", True), ("application", True),
     ("application/vnd.api+json", False), ("text/x-ÿ", True), ("K/json", False)],
)  # fmt: skip
def test_media_type_grammar_at_paranoia_2(media_type: str, invalid: bool) -> None:
    found = rules(request(headers=(("Content-Type", media_type),)), 2)
    assert ("protocol-content-type-invalid" in found) is invalid


def test_header_names_are_checked_every_time() -> None:
    # Names are memoised; a second request with the same invalid name is flagged again.
    bad = request(headers=(("Bad Name", "1"),))
    assert rules(bad) == rules(bad) == {"protocol-header-name-invalid"}


@pytest.mark.parametrize(
    ("case", "req"),
    [
        ("unknown-method", request("FOO")),
        ("percent-in-target", request("GET", "/a%00")),
        ("control-in-target", request("GET", "/a\r\nb")),
        ("body", request("GET", body=b"x")),
        ("wire-form", request("GET", raw=b"GET / HTTP/1.1\r\n\r\n")),
        ("bad-name", request("GET", headers=(("Bad Name", "x"),))),
        ("framing-field", request("GET", headers=(("Content-Length", "0"),))),
        ("content-type", request("GET", headers=(JSON,))),
        ("nul-in-value", request("GET", headers=(("X-A", "a\x00"),))),
        ("line-break-in-value", request("GET", headers=(("X-A", "a\nb"),))),
        ("escaped-nul-in-value", request("GET", headers=(("X-A", "a%00"),))),
    ],
)
def test_only_plain_requests_skip_the_checks(case: str, req: InspectionRequest) -> None:
    from bastion.inspect.detectors.protocol import _unremarkable

    assert not _unremarkable(req), case


def test_a_plain_bodyless_request_is_checked_in_one_pass() -> None:
    from bastion.inspect.detectors.protocol import _unremarkable

    plain = request("GET", "/hello?x=1", (("User-Agent", "curl/8"), ("Accept", "*/*")))
    assert _unremarkable(plain)
    assert check_protocol(plain, 4) == []


@pytest.mark.parametrize(
    ("body", "mismatch"),
    [(b" " * 100 + b"x=1", True), (b"\n" * 100 + b'{"a": 1}', False), (b" " * 62 + b"tr", True)],
)
def test_the_body_start_is_found_past_any_amount_of_whitespace(body: bytes, mismatch: bool) -> None:
    found = rules(request(headers=(JSON,), body=body), paranoia=2)
    assert ("protocol-content-type-mismatch" in found) == mismatch

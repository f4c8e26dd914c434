"""Header rules of the gateway, as tables: what is stripped, replaced and added."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from bastion.http.client_ip import ClientIpResolver
from bastion.http.principal import Principal
from bastion.http.state import RequestState
from bastion.proxy.headers import (
    RequestHeaderRewriter,
    connection_tokens,
    forwarded_element,
    forwarded_node,
    identity_headers,
    strip_response_headers,
)


def rewrite(
    headers: list[tuple[bytes, bytes]],
    *,
    peer: str = "203.0.113.7",
    client_ip: str | None = None,
    trusted: tuple[str, ...] = (),
    scheme: str = "http",
    preserve_host: bool = False,
    principal: Any = None,
    forwarded_host: str | None = None,
    websocket: bool = False,
    header: str = "x-forwarded-for",
) -> dict[bytes, list[bytes]]:
    resolver = (
        ClientIpResolver([ipaddress.ip_network(t) for t in trusted], header) if trusted else None
    )
    rewriter = RequestHeaderRewriter(
        upstream_host=b"upstream.internal:9000",
        preserve_host=preserve_host,
        request_id_header="X-Request-ID",
        resolver=resolver,
        websocket=websocket,
    )
    state = RequestState("rid-42", time.perf_counter(), client_ip or peer, scheme)
    state.principal = principal
    state.forwarded_host = forwarded_host
    scope = {"headers": headers, "client": (peer, 40000), "scheme": scheme}
    result: dict[bytes, list[bytes]] = {}
    for name, value in rewriter.rewrite(scope, state).headers:
        result.setdefault(name, []).append(value)
    return result


HOP_BY_HOP_CASES = [
    ("connection", b"connection", b"keep-alive"),
    ("keep-alive", b"keep-alive", b"timeout=5"),
    ("proxy-connection", b"proxy-connection", b"keep-alive"),
    ("te", b"te", b"trailers"),
    ("trailer", b"trailer", b"x-checksum"),
    ("transfer-encoding", b"transfer-encoding", b"chunked"),
    ("upgrade", b"upgrade", b"h2c"),
    ("proxy-authenticate", b"proxy-authenticate", b"Basic"),
    ("proxy-authorization", b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
]


@pytest.mark.parametrize(
    ("name", "value"), [c[1:] for c in HOP_BY_HOP_CASES], ids=[c[0] for c in HOP_BY_HOP_CASES]
)
def test_hop_by_hop_request_headers_are_removed(name: bytes, value: bytes) -> None:
    headers = rewrite([(b"host", b"gw.example"), (name, value), (b"accept", b"*/*")])
    assert name not in headers
    assert headers[b"accept"] == [b"*/*"]


def test_headers_named_in_connection_are_removed() -> None:
    headers = rewrite(
        [
            (b"x-secret-hop", b"1"),
            (b"connection", b"X-Secret-Hop, close"),
            (b"x-other", b"kept"),
            (b"x-also", b"2"),
            (b"connection", b"x-also"),
        ]
    )
    assert b"x-secret-hop" not in headers
    assert b"x-also" not in headers
    assert headers[b"x-other"] == [b"kept"]


@pytest.mark.parametrize(
    "name",
    [
        b"x-bastion-user",
        b"x-bastion-roles",
        b"x-bastion-scopes",
        b"x-bastion-session",
        b"x-bastion-anything",
        # CGI-style upstreams fold these into HTTP_X_BASTION_USER as well.
        b"x_bastion_user",
        b"x_bastion-user",
        b"x-bastion_roles",
    ],
)
def test_client_sent_identity_headers_are_removed(name: bytes) -> None:
    headers = rewrite([(name, b"admin"), (b"x-bastionish", b"kept")])
    assert name not in headers
    assert headers[b"x-bastionish"] == [b"kept"]


def test_identity_headers_come_from_the_verified_principal_only() -> None:
    principal = Principal(
        subject="user-7",
        method="bearer",
        roles=("admin", "ops"),
        scopes=("read", "write"),
        session_id="sess-1",
    )
    headers = rewrite([(b"x-bastion-user", b"forged")], principal=principal)
    assert headers[b"x-bastion-user"] == [b"user-7"]
    assert headers[b"x-bastion-roles"] == [b"admin,ops"]
    assert headers[b"x-bastion-scopes"] == [b"read write"]
    assert headers[b"x-bastion-session"] == [b"sess-1"]


def test_identity_values_with_control_characters_are_left_out() -> None:
    principal = Principal(subject="evil\r\nx-injected: 1", method="api_key")
    assert all(name != b"x-bastion-user" for name, _ in identity_headers(principal))


FORWARDING_CASES: list[
    tuple[str, dict[str, Any], list[tuple[bytes, bytes]], dict[bytes, bytes]]
] = [
    (
        "untrusted peer: spoofed chain replaced",
        {"peer": "203.0.113.7"},
        [
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"forwarded", b"for=1.2.3.4"),
            (b"x-real-ip", b"1.2.3.4"),
        ],
        {
            b"x-forwarded-for": b"203.0.113.7",
            b"forwarded": b"for=203.0.113.7;proto=http;host=gw.example",
            b"x-real-ip": b"203.0.113.7",
            b"x-forwarded-proto": b"http",
            b"x-forwarded-host": b"gw.example",
        },
    ),
    (
        "ipv6 client quoted in Forwarded",
        {"peer": "2001:db8::1"},
        [],
        {
            b"x-forwarded-for": b"2001:db8::1",
            b"forwarded": b'for="[2001:db8::1]";proto=http;host=gw.example',
        },
    ),
    (
        "https scheme",
        {"scheme": "https"},
        [],
        {
            b"x-forwarded-proto": b"https",
            b"forwarded": b"for=203.0.113.7;proto=https;host=gw.example",
        },
    ),
    (
        "trusted peer: chain extended with the peer",
        {"peer": "10.0.0.5", "client_ip": "198.51.100.9", "trusted": ("10.0.0.0/8",)},
        [(b"x-forwarded-for", b"198.51.100.9")],
        {
            b"x-forwarded-for": b"198.51.100.9, 10.0.0.5",
            b"forwarded": b"for=198.51.100.9;proto=http, for=10.0.0.5;proto=http;host=gw.example",
            b"x-real-ip": b"198.51.100.9",
        },
    ),
    (
        "trusted peer with a Forwarded chain",
        {
            "peer": "10.0.0.5",
            "client_ip": "198.51.100.9",
            "trusted": ("10.0.0.0/8",),
            "header": "forwarded",
        },
        [(b"forwarded", b"for=198.51.100.9;proto=https"), (b"x-forwarded-for", b"6.6.6.6")],
        {
            b"x-forwarded-for": b"198.51.100.9, 10.0.0.5",
            b"forwarded": b"for=198.51.100.9;proto=https, for=10.0.0.5;proto=http;host=gw.example",
        },
    ),
    (
        "trusted peer believed for X-Forwarded-For: a client's Forwarded is rebuilt",
        {"peer": "10.0.0.5", "client_ip": "198.51.100.9", "trusted": ("10.0.0.0/8",)},
        [(b"forwarded", b"for=127.0.0.1;proto=https"), (b"x-forwarded-for", b"198.51.100.9")],
        {
            b"x-forwarded-for": b"198.51.100.9, 10.0.0.5",
            b"forwarded": b"for=198.51.100.9;proto=http, for=10.0.0.5;proto=http;host=gw.example",
        },
    ),
    (
        "trusted peer without a chain",
        {"peer": "10.0.0.5", "trusted": ("10.0.0.0/8",)},
        [],
        {b"x-forwarded-for": b"10.0.0.5", b"forwarded": b"for=10.0.0.5;proto=http;host=gw.example"},
    ),
    (
        "host set by a trusted proxy wins for X-Forwarded-Host",
        {"forwarded_host": "public.example"},
        [],
        {b"x-forwarded-host": b"public.example"},
    ),
]


@pytest.mark.parametrize(
    ("options", "extra", "expected"),
    [c[1:] for c in FORWARDING_CASES],
    ids=[c[0] for c in FORWARDING_CASES],
)
def test_forwarding_headers(
    options: dict[str, Any], extra: list[tuple[bytes, bytes]], expected: dict[bytes, bytes]
) -> None:
    headers = rewrite([(b"host", b"gw.example"), *extra], **options)
    for name, value in expected.items():
        assert headers[name] == [value], name


def _rewriter(trusted: tuple[str, ...] = ()) -> RequestHeaderRewriter:
    networks = [ipaddress.ip_network(t) for t in trusted]
    return RequestHeaderRewriter(
        upstream_host=b"upstream.internal:9000",
        preserve_host=False,
        request_id_header="X-Request-ID",
        resolver=ClientIpResolver(networks, "x-forwarded-for") if trusted else None,
    )


@pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)])
def test_head_lines_match_the_header_pairs(trusted: tuple[str, ...]) -> None:
    rewriter = _rewriter(trusted)
    state = RequestState("rid", 0.0, "198.51.100.9", "https")
    state.principal = Principal(subject="u", method="bearer", roles=("r",))
    scope = {
        "headers": [
            (b"host", b"gw.example"),
            (b"x-forwarded-for", b"198.51.100.9"),
            (b"content-length", b"3"),
            (b"accept", b"*/*"),
        ],
        "client": ("10.0.0.5", 1),
        "scheme": "http",
    }
    pairs = rewriter.rewrite(scope, state)
    lines, content_length, transfer_encoding = rewriter.http_head(scope, state, b"GET / HTTP/1.1")
    assert lines[0] == b"GET / HTTP/1.1"
    assert b"\r\n".join(lines[1:]) == b"\r\n".join(n + b": " + v for n, v in pairs.headers)
    assert (content_length, transfer_encoding) == (pairs.content_length, False) == (b"3", False)


def test_cached_forwarding_headers_follow_the_client() -> None:
    rewriter = _rewriter()
    seen = []
    for ip, host in [
        ("192.0.2.1", b"a.example"),
        ("192.0.2.2", b"a.example"),
        ("192.0.2.1", b"b.example"),
        ("192.0.2.1", b"a.example"),
    ]:
        state = RequestState("rid", 0.0, ip, "http")
        scope = {"headers": [(b"host", host)], "client": (ip, 1), "scheme": "http"}
        headers = dict(rewriter.rewrite(scope, state).headers)
        seen.append((headers[b"x-forwarded-for"], headers[b"x-forwarded-host"]))
    assert seen == [
        (b"192.0.2.1", b"a.example"),
        (b"192.0.2.2", b"a.example"),
        (b"192.0.2.1", b"b.example"),
        (b"192.0.2.1", b"a.example"),
    ]


def test_host_is_the_upstream_unless_preserved() -> None:
    assert rewrite([(b"host", b"gw.example")])[b"host"] == [b"upstream.internal:9000"]
    assert rewrite([(b"host", b"gw.example")], preserve_host=True)[b"host"] == [b"gw.example"]
    assert rewrite([], preserve_host=True)[b"host"] == [b"upstream.internal:9000"]


def test_request_id_replaces_the_client_value() -> None:
    headers = rewrite([(b"x-request-id", b"client-chosen")])
    assert headers[b"x-request-id"] == [b"rid-42"]


def test_framing_and_expect_are_decided_again() -> None:
    headers = rewrite(
        [(b"content-length", b"10"), (b"expect", b"100-continue"), (b"content-type", b"text/plain")]
    )
    assert b"content-length" not in headers
    assert b"expect" not in headers
    assert headers[b"content-type"] == [b"text/plain"]


def test_websocket_handshake_headers_are_left_to_the_client_library() -> None:
    headers = rewrite(
        [
            (b"sec-websocket-key", b"abc"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
            (b"sec-websocket-protocol", b"chat"),
            (b"origin", b"https://app.example"),
        ],
        websocket=True,
        scheme="wss",
    )
    assert not any(name.startswith(b"sec-websocket-") for name in headers)
    assert headers[b"origin"] == [b"https://app.example"]
    assert headers[b"x-forwarded-proto"] == [b"https"]


@pytest.mark.parametrize(
    ("ip", "node"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", '"[2001:db8::1]"'),
        ("::1", '"[::1]"'),
        ("unknown", "unknown"),
    ],
)
def test_forwarded_node(ip: str, node: str) -> None:
    assert forwarded_node(ip) == node


@pytest.mark.parametrize(
    ("host", "element"),
    [
        ("example.com", "for=192.0.2.1;proto=http;host=example.com"),
        ("example.com:8080", 'for=192.0.2.1;proto=http;host="example.com:8080"'),
        ('ev"il', 'for=192.0.2.1;proto=http;host="ev\\"il"'),
        (None, "for=192.0.2.1;proto=http"),
    ],
)
def test_forwarded_element_quotes_non_tokens(host: str | None, element: str) -> None:
    assert forwarded_element("192.0.2.1", "http", host) == element


def test_connection_tokens_ignore_connection_options() -> None:
    assert connection_tokens(b"close, X-Foo , keep-alive,upgrade") == frozenset({b"x-foo"})


def test_response_hop_by_hop_headers_are_removed() -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"connection", b"x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"proxy-authenticate", b"Basic"),
        (b"date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
        (b"set-cookie", b"a=1"),
    ]
    assert strip_response_headers(headers, frozenset({b"x-hop"})) == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
    ]

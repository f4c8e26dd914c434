"""Client address resolution: spoofed forwarding headers never move the client."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.http.client_ip import ClientIpResolver, normalize_ip, parse_forwarded

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def resolver(trusted=TRUSTED, header="x-forwarded-for") -> ClientIpResolver:  # type: ignore[no-untyped-def]
    return ClientIpResolver(trusted, header)


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


XFF_CASES = [
    # id, peer, headers, expected client
    ("untrusted-peer-spoofs-xff", "203.0.113.7", h(("x-forwarded-for", "1.2.3.4")), "203.0.113.7"),
    (
        "untrusted-peer-spoofs-forwarded",
        "203.0.113.7",
        h(("forwarded", "for=1.2.3.4")),
        "203.0.113.7",
    ),
    ("trusted-peer-honoured", "10.0.0.1", h(("x-forwarded-for", "198.51.100.2")), "198.51.100.2"),
    (
        "chain-rightmost-untrusted-wins",
        "10.0.0.1",
        h(("x-forwarded-for", "6.6.6.6, 198.51.100.2, 10.0.0.5")),
        "198.51.100.2",
    ),
    (
        "client-prepends-fake-hop",
        "10.0.0.1",
        h(("x-forwarded-for", "10.9.9.9, 198.51.100.2")),
        "198.51.100.2",
    ),
    ("all-trusted-leftmost", "10.0.0.1", h(("x-forwarded-for", "10.0.0.7, 10.0.0.5")), "10.0.0.7"),
    (
        "malformed-hop-stops-walk",
        "10.0.0.1",
        h(("x-forwarded-for", "198.51.100.2, not-an-ip")),
        "10.0.0.1",
    ),
    (
        "malformed-behind-trusted",
        "10.0.0.1",
        h(("x-forwarded-for", "garbage, 10.0.0.5")),
        "10.0.0.5",
    ),
    ("empty-xff", "10.0.0.1", h(("x-forwarded-for", "")), "10.0.0.1"),
    ("xff-with-port", "10.0.0.1", h(("x-forwarded-for", "198.51.100.2:4711")), "198.51.100.2"),
    (
        "xff-ipv6-bracketed-port",
        "10.0.0.1",
        h(("x-forwarded-for", "[2001:db8::1]:80")),
        "2001:db8::1",
    ),
    ("xff-ipv6-normalised", "10.0.0.1", h(("x-forwarded-for", "2001:0DB8:0:0::1")), "2001:db8::1"),
    ("xff-ipv4-mapped", "10.0.0.1", h(("x-forwarded-for", "::ffff:198.51.100.2")), "198.51.100.2"),
    (
        "xff-multiple-lines-joined",
        "10.0.0.1",
        h(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.3")),
        "198.51.100.3",
    ),
    ("xff-overlong-number", "10.0.0.1", h(("x-forwarded-for", "1.2.3.4444")), "10.0.0.1"),
    ("xff-octal-looking", "10.0.0.1", h(("x-forwarded-for", "010.0.0.1")), "10.0.0.1"),
    ("trusted-ipv6-peer", "fd00::1", h(("x-forwarded-for", "198.51.100.9")), "198.51.100.9"),
    ("ipv6-peer-normalised", "2001:DB8::0:1", [], "2001:db8::1"),
    (
        "mapped-peer-trusted",
        "::ffff:10.0.0.1",
        h(("x-forwarded-for", "198.51.100.2")),
        "198.51.100.2",
    ),
]

FORWARDED_CASES = [
    ("simple", "10.0.0.1", h(("forwarded", "for=198.51.100.2")), "198.51.100.2"),
    (
        "quoted-ipv6",
        "10.0.0.1",
        h(("forwarded", 'for="[2001:db8:cafe::17]:4711"')),
        "2001:db8:cafe::17",
    ),
    ("case-insensitive-param", "10.0.0.1", h(("forwarded", "For=198.51.100.2")), "198.51.100.2"),
    (
        "chain",
        "10.0.0.1",
        h(("forwarded", "for=6.6.6.6, for=198.51.100.2;proto=https")),
        "198.51.100.2",
    ),
    ("obfuscated-stops", "10.0.0.1", h(("forwarded", "for=198.51.100.2, for=_hidden")), "10.0.0.1"),
    ("unknown-stops", "10.0.0.1", h(("forwarded", "for=unknown")), "10.0.0.1"),
    (
        "comma-in-quotes",
        "10.0.0.1",
        h(("forwarded", 'for="198.51.100.2";host="a,b"')),
        "198.51.100.2",
    ),
    ("unquoted-ipv6-invalid", "10.0.0.1", h(("forwarded", "for=[2001:db8::1]:80x")), "10.0.0.1"),
    ("missing-for", "10.0.0.1", h(("forwarded", "proto=https")), "10.0.0.1"),
    (
        "client-sent-xff-ignored-in-forwarded-mode",
        "10.0.0.1",
        h(("forwarded", "for=198.51.100.2"), ("x-forwarded-for", "6.6.6.6")),
        "198.51.100.2",
    ),
    ("garbage-pair", "10.0.0.1", h(("forwarded", "for")), "10.0.0.1"),
]


@pytest.mark.parametrize(
    ("header", "peer", "headers", "expected"),
    [("x-forwarded-for", *case[1:]) for case in XFF_CASES]
    + [("forwarded", *case[1:]) for case in FORWARDED_CASES],
    ids=[case[0] for case in XFF_CASES + FORWARDED_CASES],
)
def test_resolution(
    header: str, peer: str, headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    assert resolver(header=header).resolve(peer, "http", headers).ip == expected


def test_no_trusted_proxies_means_peer_always() -> None:
    address = resolver(trusted=[]).resolve(
        "127.0.0.1", "http", h(("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https"))
    )
    assert (address.ip, address.scheme) == ("127.0.0.1", "http")


@pytest.mark.parametrize(
    ("peer", "headers", "scheme"),
    [
        ("10.0.0.1", h(("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")), "https"),
        ("10.0.0.1", h(("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "gopher")), "http"),
        ("203.0.113.1", h(("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")), "http"),
    ],
)
def test_scheme_only_from_trusted(
    peer: str, headers: list[tuple[bytes, bytes]], scheme: str
) -> None:
    assert resolver().resolve(peer, "http", headers).scheme == scheme


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        (h(("forwarded", "for=1.2.3.4;proto=https")), "https"),
        (h(("forwarded", 'for=1.2.3.4;proto="https"')), "https"),
        (h(("forwarded", "for=1.2.3.4;proto=javascript")), "http"),
    ],
)
def test_scheme_from_forwarded(headers: list[tuple[bytes, bytes]], scheme: str) -> None:
    assert resolver(header="forwarded").resolve("10.0.0.1", "http", headers).scheme == scheme


@pytest.mark.parametrize(
    ("header", "headers"),
    [
        # A proxy appending to X-Forwarded-For passes the client's own Forwarded through.
        (
            "x-forwarded-for",
            h(("forwarded", "for=127.0.0.1;proto=https"), ("x-forwarded-for", "203.0.113.9")),
        ),
        # And one appending to Forwarded passes the client's X-Forwarded-For (and -Proto).
        (
            "forwarded",
            h(
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=203.0.113.9"),
            ),
        ),
    ],
)
def test_the_other_header_never_decides(header: str, headers: list[tuple[bytes, bytes]]) -> None:
    address = resolver(header=header).resolve("10.0.0.5", "http", headers)
    assert (address.ip, address.scheme) == ("203.0.113.9", "http")


def test_unknown_header_refused() -> None:
    with pytest.raises(ValueError, match="unsupported forwarding header"):
        ClientIpResolver(TRUSTED, "x-real-ip")


def test_forwarded_host() -> None:
    address = resolver(header="forwarded").resolve(
        "10.0.0.1", "http", h(("forwarded", 'for=1.2.3.4;host="api.x"'))
    )
    assert address.host == "api.x"


def test_missing_peer_is_unknown() -> None:
    assert resolver().resolve(None, "http", h(("x-forwarded-for", "1.2.3.4"))).ip == "unknown"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("192.168.001.1", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_normalize_ip(text: str, expected: str | None) -> None:
    assert normalize_ip(text) == expected


def test_parse_forwarded_quoting() -> None:
    elements = parse_forwarded('for="_gazonk"; proto=https, for="[::1]:80";by=x')
    assert elements == [{"for": '"_gazonk"', "proto": "https"}, {"for": '"[::1]:80"', "by": "x"}]


@given(st.text(max_size=200))
def test_arbitrary_headers_never_raise(value: str) -> None:
    encoded = value.encode("utf-8")
    for name in ("forwarded", "x-forwarded-for"):
        result = resolver(header=name).resolve("10.0.0.1", "http", [(name.encode(), encoded)])
        assert result.ip == "10.0.0.1" or normalize_ip(result.ip) == result.ip

"""The SSRF detector: internal targets in every notation, dangerous schemes, benign URLs."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors.ssrf import detect_ssrf

PARAM = Location("query", "q")
URL_PARAM = Location("query", "callback_url")


def rules(text: str, paranoia: int = 1, location: Location = PARAM) -> set[str]:
    return {match.rule for match in detect_ssrf(Normalized(text), location, paranoia)}


INTERNAL = [
    ("loopback", "http://127.0.0.1/admin"),
    ("localhost", "https://localhost:8443/"),
    ("localhost-upper", "HTTP://LOCALHOST/"),
    ("metadata-ip", "http://169.254.169.254/latest/meta-data/"),
    ("metadata-gcp", "http://metadata.google.internal/computeMetadata/v1/"),
    ("metadata-bare", "http://metadata/computeMetadata/v1/"),
    ("instance-data", "http://instance-data/latest/"),
    ("private-10", "http://10.0.0.5:8080/"),
    ("private-172", "http://172.16.3.4/"),
    ("private-192", "http://192.168.1.1/"),
    ("unspecified", "http://0.0.0.0:6379/"),
    ("decimal", "http://2130706433/"),
    ("octal", "http://0177.0.0.1/"),
    ("hex", "http://0x7f000001/"),
    ("hex-short", "http://0x7f.1/"),
    ("short", "http://127.1/"),
    ("overflow", "http://7147006462/"),
    ("ipv6-loopback", "http://[::1]/"),
    ("ipv6-mapped", "http://[::ffff:127.0.0.1]/"),
    ("ipv6-mapped-long", "http://[0:0:0:0:0:ffff:7f00:1]/"),
    ("ipv6-ula", "http://[fd00:ec2::254]/"),
    ("ipv6-link-local-zone", "http://[fe80::1%25eth0]/"),
    ("userinfo", "http://good.example@127.0.0.1/"),
    ("fragment-userinfo", "http://127.0.0.1#@good.example/"),
    ("space-userinfo", "http://good.example:80 &@good.example:80# @10.1.2.3:22/"),
    ("backslash", "http:\\\\127.0.0.1\\admin"),
    ("no-slashes", "http:127.0.0.1"),
    ("url-encoded", "http%3A%2F%2F169.254.169.254%2F"),
    ("double-encoded", "http%253A%252F%252Flocalhost%252F"),
    ("circled-digits", "http://\u2460\u2461\u2466.\u24ea.\u24ea.\u2460/"),
    ("ideographic-dots", "http://169\u3002254\u3002169\u3002254/"),
    ("nip-io", "http://127.0.0.1.nip.io/"),
    ("sslip-dashes", "http://app-10-0-0-1.sslip.io/"),
    ("docker-host", "http://host.docker.internal:2375/"),
    ("scheme-relative", "//localhost/admin"),
    ("gopher-internal", "gopher://127.0.0.1:6379/_INFO"),
    ("in-xml-attribute", '<a probe="http://169.254.169.254/"></a>'),
]


@pytest.mark.parametrize("text", [t for _, t in INTERNAL], ids=[i for i, _ in INTERNAL])
def test_internal_target_matches_at_paranoia_1(text: str) -> None:
    assert "ssrf-internal-host" in rules(text)


OBFUSCATED = [
    ("decimal-public", "http://123456789/"),
    ("hex-dotted", "http://0xA9.0xFE.0xA9.0xFE/"),
    ("split-letters", "http://\\\\g\\\\o\\\\o\\\\g\\\\l\\\\e.\\\\c\\\\o\\\\m/"),
]


@pytest.mark.parametrize("text", [t for _, t in OBFUSCATED], ids=[i for i, _ in OBFUSCATED])
def test_unusual_host_notation_matches_at_paranoia_1(text: str) -> None:
    assert "ssrf-obfuscated-host" in rules(text)


DANGEROUS = [
    ("gopher", "gopher://example.com:70/_x"),
    ("dict", "dict://example.com:11211/stat"),
    ("file", "file:///etc/passwd"),
    ("ldap", "ldap://example.com/dc=x"),
    ("tftp", "TFTP://example.com/boot"),
    ("jar", "jar:http://example.com/x.jar!/"),
    ("netdoc", "netdoc:/etc/passwd"),
]


@pytest.mark.parametrize("text", [t for _, t in DANGEROUS], ids=[i for i, _ in DANGEROUS])
def test_dangerous_scheme_matches_at_paranoia_1(text: str) -> None:
    assert "ssrf-dangerous-scheme" in rules(text)


BARE_HOSTS = ["localhost/", "127.0.0.1:8080", "[::1]", "169.254.169.254/latest", "LOCALHOST"]


@pytest.mark.parametrize("text", BARE_HOSTS, ids=BARE_HOSTS)
def test_bare_host_in_a_url_parameter(text: str) -> None:
    assert "ssrf-internal-host" in rules(text, 1, URL_PARAM)


BENIGN = [
    ("public-url", "http://example.com/"),
    ("public-https", "https://api.example.net/v1/items?page=2#top"),
    ("public-ip", "https://93.184.216.34/"),
    ("documentation-ip", "http://192.0.2.10/hook"),
    ("github-at", "https://github.com/@octocat"),
    ("email", "bob@example.com"),
    ("version", "10.0.1"),
    ("time", "12:34:56"),
    ("port-mention", "listen on http:8080"),
    ("php-wrapper", "php://filter/resource=index.php"),
    ("data-image", "data:image/png;base64,iVBORw0KGgo="),
    ("prose-file", "file: report.pdf"),
    ("localhost-prose", "works on my localhost machine"),
    ("private-ip-plain", "10.0.0.7"),
]


@pytest.mark.parametrize("text", [t for _, t in BENIGN], ids=[i for i, _ in BENIGN])
def test_benign_value_does_not_match_at_paranoia_1(text: str) -> None:
    assert rules(text) == set()


def test_bare_public_host_in_url_parameter_does_not_match() -> None:
    assert rules("example.com/callback", 1, URL_PARAM) == set()
    assert rules("localhost", 1, PARAM) == set()


def test_rebinding_service_with_public_address_waits_for_paranoia_2() -> None:
    text = "http://93.184.216.34.nip.io/"
    assert rules(text, 1) == set()
    assert rules(text, 2) == {"ssrf-rebinding-service"}


def test_match_carries_location_category_severity_and_level() -> None:
    (match,) = detect_ssrf(Normalized("http://localhost/"), URL_PARAM, 1)
    assert (match.rule, match.category, match.severity) == (
        "ssrf-internal-host",
        "ssrf",
        Severity.CRITICAL,
    )
    assert (match.location, match.paranoia) == (URL_PARAM, 1)


@pytest.mark.parametrize(
    "text", ["%ed%a0%80 http://localhost/", "\\ud83d http://127.0.0.1/ \\udc00"]
)
def test_lone_surrogates_do_not_raise(text: str) -> None:
    assert detect_ssrf(Normalized(text), Location("json", "url"), 4)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from([1, 2, 3, 4]))
def test_never_raises_and_is_deterministic(text: str, paranoia: int) -> None:
    first = detect_ssrf(Normalized(text), URL_PARAM, paranoia)
    assert first == detect_ssrf(Normalized(text), URL_PARAM, paranoia)
    assert all(match.paranoia <= paranoia for match in first)


@given(st.from_regex(r"\Ahttps?://[a-z0-9.:@\[\]%#/\\-]{0,60}\Z"))
def test_url_shaped_text_never_raises(text: str) -> None:
    detect_ssrf(Normalized(text), PARAM, 4)


@pytest.mark.parametrize(
    "text",
    [
        "http://" * 9362,
        "http://a@" + "@" * 65000,
        "http://[" + ":" * 65000,
        "http://" + "0x" * 32000,
        "a:" * 32768,
        "http://" + "\\a" * 32000,
    ],
    ids=["schemes", "ats", "brackets", "hex-prefixes", "colons", "backslashes"],
)
def test_adversarial_64k_input_completes(text: str) -> None:
    started = time.perf_counter()
    detect_ssrf(Normalized(text), URL_PARAM, 4)
    elapsed = time.perf_counter() - started
    print(f"ssrf 64 KiB adversarial: {elapsed * 1000:.1f} ms")


def test_bare_host_still_read_where_a_url_is_expected() -> None:
    matches = detect_ssrf(Normalized("localhost"), Location("query", "redirect_url"), 1)
    assert {m.rule for m in matches} == {"ssrf-internal-host"}


def test_bare_word_elsewhere_is_skipped() -> None:
    assert detect_ssrf(Normalized("localhost"), Location("query", "name"), 4) == []


_URL_PARTS = st.sampled_from(
    ["http", "gopher", "x", "a" * 24, "b" * 26, "0", "+", ".", "_", "-", ":", "::", "/", " ",
     "\\", "@", "é", "//"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_URL_PARTS, max_size=12))
def test_schemes_are_found_where_the_url_start_pattern_finds_them(parts: list[str]) -> None:
    from bastion.inspect.detectors.ssrf import _URL_START, _schemes

    text = "".join(parts)
    expected = [(match.group(1), match.end()) for match in _URL_START.finditer(text)]
    assert list(_schemes(text)) == expected


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_internal_ranges_by_mask_equal_the_networks(address: int) -> None:
    import ipaddress

    from bastion.inspect.detectors.ssrf import _INTERNAL_V4, _v4_internal

    expected = any(ipaddress.IPv4Address(address) in net for net in _INTERNAL_V4)
    assert _v4_internal(address) == expected

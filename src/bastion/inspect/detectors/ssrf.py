"""Server-side request forgery: URLs and host names that point a server at itself or its network.

URLs are found anywhere in a value (``scheme:`` of a fetchable scheme or any ``scheme://``, and
``//host`` at the start); a value whose *name* says it holds a URL (``url``, ``redirect_uri``,
``callback``, ``webhook``…) is also read as a bare ``host[:port][/path]``. Each URL yields every
host a lenient client might connect to: the authority host, and the host after each ``@`` (the
``http://good.com@127.0.0.1`` and ``http://127.0.0.1#@good.com`` confusions). A host is
internal when it is a loopback, private, link-local, shared or unspecified address in any
notation inet_aton accepts (``2130706433``, ``0177.1``, ``0x7f.1``) or in IPv6 (mapped and
compatible IPv4 included), a local or cloud-metadata name, or a wildcard-DNS name that embeds
such an address (``127.0.0.1.nip.io``). Parsing is hand-written and bounded: at most
``_MAX_URLS`` URLs per value, ``_MAX_URL`` characters each.

``php://`` and other PHP stream wrappers are the LFI detector's concern and are not matched.
"""

from __future__ import annotations

import html
import ipaddress
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

import re2

from bastion.inspect.core import Finder, Location, Match, Normalized, Severity

__all__ = ["detect_ssrf"]

_MAX_URLS = 32
_MAX_URL = 512
_MAX_AT = 8
_MAX_TEXT = 64 * 1024

# Schemes a server-side fetcher may follow even when written without "//" ("http:127.0.0.1").
_FETCH_SCHEMES = frozenset(
    {
        "http", "https", "ftp", "ftps", "sftp", "gopher", "dict", "file", "ldap", "ldaps",
        "ldapi", "tftp", "jar", "netdoc", "local_file", "ws", "wss", "smb", "rsync", "ssh",
        "telnet", "imap", "pop3", "smtp", "irc", "rtmp", "rtsp", "acap", "xri",
    }
)  # fmt: skip
# Schemes that let a forged request talk to non-HTTP services or read local files.
_DANGEROUS = Finder(
    r"(?:^|[^a-z0-9+._-])(?:(gopher|dict|ldap[si]?|tftp|netdoc|local_file):/|(file):/"
    r"|(jar):[a-z][a-z0-9+.-]*:)"
)
# Where a URL may start: a scheme and ":". The definition :func:`_schemes` implements without a
# regular-expression call (a test holds the two equal).
_URL_START = re2.compile(r"(?:^|[^a-z0-9+._-])([a-z][a-z0-9+._-]{0,24}):")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+._-")
_MAX_SCHEME = 25
"""Longest scheme ``_URL_START`` accepts: a letter and up to 24 more characters."""
# A scheme-relative URL ("//host", "\\host") starts with two slashes after these.
_LEADING_BLANKS = "".join(map(chr, range(0x21))) + "\"'"
_DATA_URL = re2.compile(r"(?:^|[^a-z0-9])data:(?:[a-z]+/[a-z0-9.+-]+)?(?:[;,]|$)")
# A host spelled with backslashes between its letters ("\\l\\o\\c\\a\\l..."), which some
# clients drop.
_SPLIT_HOST = re2.compile(r"^[/\\]*[a-z0-9.-]*(?:\\+[a-z0-9.-]+){2,}")
# Ends of the authority (WHATWG treats "\" as "/" in special schemes).
_AUTHORITY_END = frozenset("/?#\\ \t\r\n\"'<>`")
_HOST_END = _AUTHORITY_END | {":", "@", ",", ";", ")", "(", "]", "[", "|", "{", "}"}
# Hosts that resolve to the machine itself or its cluster, and cloud metadata services.
_LOCAL_NAMES = frozenset(
    {
        "localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4",
        "localhost6", "localhost6.localdomain6", "ip6-localhost", "ipv6-localhost",
        "ip6-loopback", "ipv6-loopback", "metadata", "metadata.google.internal",
        "metadata.goog", "instance-data", "metadata.packet.net", "metadata.tencentyun.com",
        "metadata.azure.com", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "localtest.me", "lvh.me", "vcap.me", "lacolhost.com", "fuf.me", "readme.localtest.me",
        "broadcasthost",
    }
)  # fmt: skip
_LOCAL_SUFFIXES = (
    ".localhost", ".localdomain", ".internal", ".cluster.local", ".svc", ".localtest.me",
    ".lvh.me", ".vcap.me",
)  # fmt: skip
# Wildcard DNS services that answer with the address written in the name.
_REBINDING_SUFFIXES = (".nip.io", ".xip.io", ".sslip.io", ".nip.direct", ".xip.name", ".rbndr.us")
_INTERNAL_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
    )
)  # fmt: skip
_INTERNAL_V4_MASKS = tuple((int(net.network_address), int(net.netmask)) for net in _INTERNAL_V4)
_DOCUMENTATION_V6 = ipaddress.IPv6Network("2001:db8::/32")
_URLISH_NAMES = (
    "url", "uri", "href", "link", "dest", "redir", "callback", "webhook", "target", "proxy",
    "endpoint", "feed", "fetch", "forward", "return", "next", "goto", "continue", "host",
    "domain", "site", "origin", "remote", "upstream", "src", "source", "image", "avatar",
)  # fmt: skip
# Dots that IDNA-aware resolvers read as ".".
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _parse_ipv4(host: str) -> tuple[int, bool] | None:
    """inet_aton's reading of ``host`` (1-4 parts, each decimal, ``0x`` hex or ``0`` octal, the
    last filling the remaining bytes) and whether it was written other than as a dotted quad.
    Values past 32 bits wrap, as in resolvers that keep the low word."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or len(host) > 64:
        return None
    numbers: list[int] = []
    unusual = len(parts) != 4
    for part in parts:
        if part.startswith("0x"):
            digits, base = part[2:], 16
            unusual = True
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
            unusual = True
        else:
            digits, base = part, 10
        if digits and not all(c in "0123456789abcdef"[:base] for c in digits):
            return None
        if not digits and base != 16:
            return None
        numbers.append(int(digits, base) if digits else 0)
    value = 0
    for number in numbers[:-1]:
        if number > 0xFF:
            return None
        value = (value << 8) | number
    last_bits = 8 * (5 - len(numbers))
    last = numbers[-1]
    if last >= 1 << last_bits:
        unusual = True
        last &= (1 << last_bits) - 1
    return ((value << last_bits) | last) & 0xFFFFFFFF, unusual


def _v4_internal(address: int) -> bool:
    # Integer masks: an IPv4Address and nine network tests cost microseconds per host.
    return any(address & mask == network for network, mask in _INTERNAL_V4_MASKS)


def _v6_internal(text: str) -> tuple[bool, bool] | None:
    """(internal, embeds IPv4) for an IPv6 literal, or None if it is not one."""
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    embedded = ip.ipv4_mapped or ip.sixtofour
    packed = int(ip)
    if embedded is None and packed >> 32 == 0 and packed > 1:
        embedded = ipaddress.IPv4Address(packed & 0xFFFFFFFF)  # IPv4-compatible ::a.b.c.d
    if embedded is None and packed >> 32 == 0x64FF9B << 64:
        embedded = ipaddress.IPv4Address(packed & 0xFFFFFFFF)  # NAT64 64:ff9b::a.b.c.d
    if embedded is not None:
        return _v4_internal(int(embedded)), True
    # Literals outside global unicast ("[a::]", "[dead:beef::]") reach nothing public.
    internal = (not ip.is_global or ip.is_reserved) and ip not in _DOCUMENTATION_V6
    return internal, False


def _rebinding_target(host: str) -> bool | None:
    """For a wildcard-DNS name, whether the address it embeds is internal; else None."""
    for suffix in _REBINDING_SUFFIXES:
        if host.endswith(suffix):
            label_text = host[: -len(suffix)]
            # The address is the last four labels, or one label with "-" or hex digits.
            tail = label_text.rsplit(".", 4)[-4:]
            dashed = tail[-1].rsplit("-", 4)[-4:]
            candidates = [".".join(tail), ".".join(dashed), "0x" + tail[-1]]
            for candidate in candidates:
                parsed = _parse_ipv4(candidate)
                if parsed is not None:
                    return _v4_internal(parsed[0])
            return False
    return None


def _classify(host: str) -> list[str]:
    """Rule names (without prefix) that ``host`` triggers."""
    host = host.strip().rstrip(".")
    if not host or len(host) > 255:
        return []
    if host.startswith("["):
        v6 = _v6_internal(host[1:].split("]", 1)[0])
        if v6 is None:
            return []
        internal, embeds_v4 = v6
        return (["internal-host"] if internal else []) + (["obfuscated-host"] if embeds_v4 else [])
    if host[0].isdigit():
        parsed = _parse_ipv4(host)
        if parsed is not None:
            address, unusual = parsed
            found = ["internal-host"] if _v4_internal(address) else []
            return found + (["obfuscated-host"] if unusual else [])
    if host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        return ["internal-host"]
    rebinding = _rebinding_target(host)
    if rebinding is not None:
        return ["internal-host"] if rebinding else ["rebinding-service"]
    return []


def _host_at(text: str, start: int) -> str:
    """The host beginning at ``start``: a bracketed IPv6 literal or a run up to a delimiter."""
    if text.startswith("[", start):
        close = text.find("]", start, start + 64)
        return text[start : close + 1] if close != -1 else ""
    end = start
    limit = min(len(text), start + 255)
    while end < limit and text[end] not in _HOST_END:
        end += 1
    return text[start:end]


def _hosts(rest: str) -> Iterator[tuple[str, bool]]:
    """Hosts in ``rest`` (the text after ``scheme:``), each with whether it is the authority
    host proper (True) or one a confused parser might pick (False)."""
    start = 0
    while start < len(rest) and rest[start] in "/\\":
        start += 1
    slashes = start
    end = start
    while end < len(rest) and rest[end] not in _AUTHORITY_END:
        end += 1
    authority = rest[start:end]
    at = authority.rfind("@")
    yield _host_at(rest, start + at + 1 if at != -1 else start), slashes > 0
    if at != -1:
        yield _host_at(rest, start), False
    # Backslashes between letters ("\\l\\o\\c\\a\\l\\h\\o\\s\\t") that some clients drop.
    if rest.count("\\", start, start + 64) >= 2:
        squeezed = rest[start:].replace("\\", "")
        yield _host_at(squeezed, 0), False
    seen = 0
    index = rest.find("@")
    while index != -1 and seen < _MAX_AT:
        yield _host_at(rest, index + 1), False
        seen += 1
        index = rest.find("@", index + 1)


def _schemes(text: str) -> Iterator[tuple[str, int]]:
    """What ``_URL_START.finditer`` finds, as ``(scheme, end)``, read from each ":" backwards:
    a scheme is the whole run of scheme characters before a ":" (a match cannot start inside a
    run), a letter first and 25 characters at most; the character before the run is part of the
    match, so it may not lie in the previous match, which ends after its ":"."""
    last_end = 0
    colon = text.find(":")
    while colon >= 0:
        start = colon
        while start > 0 and colon - start <= _MAX_SCHEME and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        if (
            start < colon
            and colon - start <= _MAX_SCHEME
            and "a" <= text[start] <= "z"
            and (start == 0 or start - 1 >= last_end)
        ):
            last_end = colon + 1
            yield text[start:colon], last_end
        colon = text.find(":", colon + 1)


def _url_hits(text: str) -> Iterator[str]:
    """Rule names for the URLs found in ``text``."""
    starts: list[int] = []
    # Tested by hand rather than with a regular expression: paths reach this on every request.
    head = text.lstrip(_LEADING_BLANKS)
    if len(head) > 1 and head[0] in "/\\" and head[1] in "/\\":
        starts.append(0)
    # Every scheme ends with ":": a text without one (most paths) holds no URL start.
    for count, (scheme, end) in enumerate(_schemes(text)):
        if count >= _MAX_URLS * 4:
            break
        if scheme in _FETCH_SCHEMES or text.startswith(("//", "\\\\"), end):
            starts.append(end)
        if len(starts) >= _MAX_URLS:
            break
    for start in starts:
        rest = text[start : start + _MAX_URL]
        if "\\" in rest and _SPLIT_HOST.search(rest) is not None:
            yield "obfuscated-host"
        for host, proper in _hosts(rest):
            # Without "//" ("http:8080", "user@42") a short number is a port or a count.
            if proper or not host.isdigit() or len(host) > 6:
                yield from _classify(host)


@lru_cache(maxsize=1024)
def _urlish(name: str) -> bool:
    """Whether a field name says it holds a URL (cached: the same names recur every request)."""
    folded = name.casefold()
    return any(part in folded for part in _URLISH_NAMES)


_RULES: dict[str, tuple[int, int]] = {
    "internal-host": (1, Severity.CRITICAL),
    "obfuscated-host": (1, Severity.CRITICAL),
    "dangerous-scheme": (1, Severity.CRITICAL),
    "rebinding-service": (2, Severity.CRITICAL),
    "data-url": (2, Severity.ERROR),
    "url-userinfo": (3, Severity.WARNING),
}
_USERINFO = re2.compile(r"(?:^|[^a-z0-9+._-])[a-z][a-z0-9+.-]{1,15}://[^/?#\x00-\x20@]+@")


def _found(text: str, location: Location) -> set[str]:
    names: set[str] = set(_url_hits(text))
    if location.kind in {"query", "form", "json", "cookie", "multipart"} and _urlish(location.name):
        # A bare "host[:port][/path]" where a URL is expected.
        bare = text.strip(" \t\r\n\"'").lstrip("/\\")
        names.update(_classify(_host_at(bare, 0)))
    # Every dangerous scheme is followed by ":/", but for "jar:".
    if (":/" in text or "jar:" in text) and _DANGEROUS.found(text):
        names.add("dangerous-scheme")
    if "data:" in text and _DATA_URL.search(text) is not None and "data:image/" not in text:
        names.add("data-url")
    if "@" in text and _USERINFO.search(text) is not None:
        names.add("url-userinfo")
    return names


def _text(value: Normalized) -> str:
    """Percent- and entity-decoded, NFKC (circled and full-width digits become ASCII), folded.
    Backslash escapes stay: in a URL "\\127.0.0.1" is a path separator and an address, not the
    octal escape the shared ``unescaped`` form would read."""
    text = value.decoded[:_MAX_TEXT]
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text.translate(_DOTS))
        # Lone surrogates (overlong "%ed%a0%80") are not UTF-8, which RE2 needs.
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.casefold()


def detect_ssrf(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    """Server-side request forgery matches in ``value`` for rules enabled at ``paranoia``."""
    raw = value.raw
    if raw.isascii() and not any(char in raw for char in ":/%&") and not _urlish(location.name):
        # No decoding can produce a ":" or "/" here, and no URL is expected at this name.
        return []
    text = _text(value)
    if ":" not in text and "/" not in text and not _urlish(location.name):
        return []
    matches: list[Match] = []
    for name in sorted(_found(text, location)):
        level, severity = _RULES[name]
        if level <= paranoia:
            matches.append(Match(f"ssrf-{name}", "ssrf", severity, location, level))
    return matches

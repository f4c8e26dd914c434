"""The path traversal / file inclusion detector: climbing, sensitive targets, stream wrappers."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors.lfi import detect_lfi

PARAM = Location("query", "file")


def rules(text: str, paranoia: int = 1, location: Location = PARAM) -> set[str]:
    return {match.rule for match in detect_lfi(Normalized(text), location, paranoia)}


ATTACKS = [
    ("dotdot-passwd", "../../../etc/passwd"),
    ("absolute-passwd", "/etc/passwd"),
    ("shadow", "/etc/shadow"),
    ("far-climb", "../../../../var/www/x"),
    ("backslash", "..\\..\\windows\\win.ini"),
    ("backslash-single", "..\\pineapple"),
    ("url-encoded", "..%2f..%2f..%2fetc%2fpasswd"),
    ("double-encoded", "%252e%252e%252f%252e%252e%252fetc%252fpasswd"),
    ("overlong-utf8", "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd"),
    ("percent-u", "%u002e%u002e%u002fetc%u002fpasswd"),
    ("tomcat-parameter", "..;/..;/WEB-INF/web.xml"),
    ("windows-dots", ".../.../WINDOWS/win.ini"),
    ("hex-spelling", "0x2e0x2e/0x2e0x2e/etc/hosts"),
    ("null-byte", "../../../../boot.ini%00.png"),
    ("proc-environ", "/proc/self/environ"),
    ("proc-fd", "/proc/self/fd/3"),
    ("ssh-key", "/root/.ssh/id_rsa"),
    ("git-config", ".git/config"),
    ("dotenv", "/var/www/app/.env"),
    ("htaccess", "../.htaccess"),
    ("web-config", "web.config"),
    ("system32", "C:\\Windows\\System32\\drivers\\etc\\hosts"),
    ("aws-credentials", "~/.aws/credentials"),
    ("tool-config-dir", "/.claude/settings.json"),
    ("vite-fs", "/@fs/etc/passwd"),
    ("php-filter", "php://filter/convert.base64-encode/resource=index.php"),
    ("php-input", "php://input"),
    ("phar", "phar://uploads/avatar.jpg/shell"),
    ("zip", "zip://archive.zip#shell.php"),
    ("expect", "expect://id"),
    ("data-wrapper", "data://text/plain;base64,PD9waHAgc3lzdGVtKCk7Pz4="),
    ("file-scheme", "file:///etc/passwd"),
    ("full-width", "\uff0e\uff0e/\uff0e\uff0e/etc/passwd"),
]


@pytest.mark.parametrize(("text"), [case[1] for case in ATTACKS], ids=[case[0] for case in ATTACKS])
def test_attacks_match_at_paranoia_1(text: str) -> None:
    matches = detect_lfi(Normalized(text), PARAM, 1)
    assert matches, text
    assert all(match.category == "lfi" and match.rule.startswith("lfi-") for match in matches)
    assert all(match.severity == Severity.CRITICAL for match in matches)


def test_traversal_in_upload_file_name_is_confident() -> None:
    assert "lfi-path-traversal" in rules("../avatar.png", location=Location("filename", "file"))


BENIGN = [
    ("relative-image", "../images/a.png"),
    ("referer-dotdot", "https://app.example.com/docs/a/../b/index.html"),
    ("file-name-dots", "Q3.report.final.v2.pdf"),
    ("ellipsis", "Wait... what?"),
    ("ellipsis-slash", "and/or..."),
    ("api-path", "/api/v1/orders/1695522"),
    ("history-param", "history.history"),
    ("environment-word", "/test.environment"),
    ("etc-prose", "Tools, etc."),
    ("well-known", "/.well-known/openid-configuration"),
    ("data-uri", "data:image/png;base64,iVBORw0KGgo="),
    ("url", "https://example.com/files/report.pdf"),
    ("email", "first.last@example.com"),
    ("css", "/css/style.css"),
    ("node-modules", "/node_modules/@osd/ui-framework/dist/kui_light.css"),
]


@pytest.mark.parametrize(("text"), [case[1] for case in BENIGN], ids=[case[0] for case in BENIGN])
def test_benign_paths_are_silent_at_paranoia_1(text: str) -> None:
    assert rules(text) == set()


def test_plain_relative_traversal_is_paranoia_2() -> None:
    matches = detect_lfi(Normalized("../images/a.png"), PARAM, 2)
    assert [(m.rule, m.paranoia) for m in matches] == [("lfi-path-traversal", 2)]
    assert matches[0].severity < Severity.CRITICAL


def test_contained_dot_segment_is_paranoia_3() -> None:
    assert rules("/a/b/../c", 2) == set()
    assert rules("/a/b/../c", 3) == {"lfi-dot-segment"}


def test_hidden_file_is_paranoia_3() -> None:
    assert rules("/.cache/x", 2) == set()
    assert rules("/.cache/x", 3) == {"lfi-hidden-file"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from([1, 2, 3, 4]))
def test_never_raises_and_is_deterministic(text: str, paranoia: int) -> None:
    first = detect_lfi(Normalized(text), PARAM, paranoia)
    assert first == detect_lfi(Normalized(text), PARAM, paranoia)
    assert all(match.paranoia <= paranoia for match in first)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="./\\%;0x2ecf ", max_size=300))
def test_path_soup_never_raises(text: str) -> None:
    detect_lfi(Normalized(text), PARAM, 4)


@pytest.mark.parametrize(
    "unit", ["../", "..;/", "%2e%2e%2f", "0x2e", ".../", "/."], ids=lambda unit: unit
)
def test_adversarial_64k_input_completes(unit: str) -> None:
    text = (unit * (65536 // len(unit) + 1))[:65536]
    started = time.perf_counter()
    detect_lfi(Normalized(text), PARAM, 4)
    print(f"lfi 64 KiB {unit!r}: {(time.perf_counter() - started) * 1000:.1f} ms")


@pytest.mark.parametrize("text", ["id_rsa", "win.ini", "0x2e0x2e0x2fetc0x2fpasswd", ".htaccess"])
def test_plain_looking_values_still_checked(text: str) -> None:
    assert detect_lfi(Normalized(text), Location("query", "f"), 1)


@pytest.mark.parametrize("text", ["abc123", "550e8400-e29b-41d4", "hello world"])
def test_inert_values_are_silent(text: str) -> None:
    assert detect_lfi(Normalized(text), Location("query", "f"), 4) == []


_NAME_PARTS = st.sampled_from(
    ["etc", "passwd", "proc", "self", "environ", "id", "rsa", "known", "hosts", "git", "config",
     "win", "ini", "env", "htaccess", "authorized", "keys", "@fs", "a", "0", "-", " ", ":", ";",
     "~", "\\", "%", "@", "=", "?"]
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(_NAME_PARTS, max_size=10))
def test_sensitive_names_all_need_a_slash_dot_or_underscore(parts: list[str]) -> None:
    from bastion.inspect.detectors.lfi import _SENSITIVE, _may_be_sensitive

    path = "".join(parts)
    assert not _may_be_sensitive(path)
    assert not _SENSITIVE.found(path)


@pytest.mark.parametrize(
    "path", ["etc/passwd", "id_rsa", "known_hosts", "authorized_keys", ".env", "@fs/x", "win.ini"]
)
def test_sensitive_names_pass_the_pre_check(path: str) -> None:
    from bastion.inspect.detectors.lfi import _SENSITIVE, _may_be_sensitive

    assert _SENSITIVE.found(path)
    assert _may_be_sensitive(path)


_PUNCTUATION_PARTS = st.sampled_from(
    ["etc", "passwd", "win", "ini", "rsa", "id", "0", "x", "e", "2", "f", "a", " ", "\t", "-",
     "!", '"', "#", "$", "'", "(", ")", "*", "+", ",", ":", ";", "<", "=", ">", "?", "@", "[",
     "]", "^", "`", "{", "|", "}", "~", "php:", "file:", "0x2e", "0x2f"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PUNCTUATION_PARTS, max_size=12), st.sampled_from([1, 2, 3, 4]))
def test_values_without_a_path_character_are_skipped_with_the_same_result(
    parts: list[str], paranoia: int
) -> None:
    from bastion.inspect.detectors import lfi

    text = "".join(parts)
    inert = lfi._INERT_BYTES
    fast = detect_lfi(Normalized(text), PARAM, paranoia)
    lfi._INERT_BYTES = b""  # the full path, for comparison
    try:
        full = detect_lfi(Normalized(text), PARAM, paranoia)
    finally:
        lfi._INERT_BYTES = inert
    assert fast == full


@pytest.mark.parametrize(
    "path",
    ["etc/passwd", "/proc/self/environ", "/proc/version", "/sys/kernel/x", "root/.bashrc",
     "/var/log/x", "var/run/secrets/k", "/usr/local/etc/x", "windows/win.ini", "winnt/repair/x",
     "boot.ini", "system.ini", "web.config", "httpd.conf", "php.ini", "my.cnf", ".htaccess",
     "a/.git/config", ".env", "x/.env.local", "id_ed25519", "authorized_keys", "known_hosts",
     "wp-config.php", "local.xml", "/.ds_store", "@fs/x", "@id/__x00__", "wp-content/debug.log",
     "backup.sql", "a/.claude/x", ".cursorrules"],
)  # fmt: skip
def test_every_sensitive_name_holds_a_mark(path: str) -> None:
    from bastion.inspect.detectors.lfi import _SENSITIVE, _may_be_sensitive

    assert _SENSITIVE.found(path)
    assert _may_be_sensitive(path)


_PATH_PARTS = st.sampled_from(
    ["/", ".", "..", "_", "etc", "passwd", "proc", "self", "environ", "sys", "kernel", "var",
     "log", "usr", "local", "windows", "win", "ini", "id", "rsa", "git", "env", "@fs", "@id",
     "wp-config", "php", "backup", "sql", "known", "hosts", "a", "x", "-"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PATH_PARTS, max_size=10))
def test_sensitive_marks_are_implied_by_every_match(parts: list[str]) -> None:
    from bastion.inspect.detectors.lfi import _SENSITIVE, _may_be_sensitive

    path = "".join(parts)
    if _SENSITIVE.found(path):
        assert _may_be_sensitive(path), path

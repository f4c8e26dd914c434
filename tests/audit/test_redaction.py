"""Secrets are redacted before an event is hashed or written: by field name and by shape."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain_harness import started_stores
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditLog
from bastion.audit.query import query_events
from bastion.audit.redaction import (
    _MEMO_LENGTH,
    _MEMO_MAX,
    REDACTED,
    Redactor,
    clean_text,
    is_secret_name,
    luhn_valid,
    redact_text,
)

# (id, detail, expected detail after redaction)
BY_NAME: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("password", {"password": "hunter2"}, {"password": REDACTED}),
    ("Password-camel", {"newPassword": "hunter2"}, {"newPassword": REDACTED}),
    ("passwd", {"passwd": "x"}, {"passwd": REDACTED}),
    ("passphrase", {"key_passphrase": "x"}, {"key_passphrase": REDACTED}),
    ("client-secret", {"client_secret": "abc"}, {"client_secret": REDACTED}),
    ("access-token", {"access_token": "abc"}, {"access_token": REDACTED}),
    ("refresh-token", {"Refresh-Token": "abc"}, {"Refresh-Token": REDACTED}),
    ("api-key", {"api_key": "abc"}, {"api_key": REDACTED}),
    ("x-api-key-header", {"X-API-Key": "abc"}, {"X-API-Key": REDACTED}),
    ("authorization", {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": REDACTED}),
    ("cookie", {"cookie": "sid=abc"}, {"cookie": REDACTED}),
    ("set-cookie", {"Set-Cookie": "sid=abc; HttpOnly"}, {"Set-Cookie": REDACTED}),
    ("otp", {"otp": "123456"}, {"otp": REDACTED}),
    ("totp", {"TOTP": "123456"}, {"TOTP": REDACTED}),
    ("backup-codes", {"backup_codes": ["a1", "b2"]}, {"backup_codes": REDACTED}),
    ("recovery-code", {"recoveryCode": "a1"}, {"recoveryCode": REDACTED}),
    ("card-number", {"card_number": "4111 1111 1111 1111"}, {"card_number": REDACTED}),
    ("cvv", {"cvv": "123"}, {"cvv": REDACTED}),
    ("private-key", {"private_key": "-----BEGIN"}, {"private_key": REDACTED}),
    ("credentials", {"credentials": {"user": "a"}}, {"credentials": REDACTED}),
    ("nested", {"a": {"b": [{"token": "t"}]}}, {"a": {"b": [{"token": REDACTED}]}}),
    ("null-stays-null", {"password": None}, {"password": None}),
    ("non-string-key", {1: "one"}, {"1": "one"}),
    # Names *about* a secret stay: ids, types and counts are what an investigation needs.
    ("token-id-kept", {"token_id": "tid"}, {"token_id": "tid"}),
    ("api-key-id-kept", {"api_key_id": "kid"}, {"api_key_id": "kid"}),
    ("token-type-kept", {"token_type": "Bearer"}, {"token_type": "Bearer"}),
    (
        "innocent-words-kept",
        {"footprint": 1, "session": "s1", "username": "ann"},
        {"footprint": 1, "session": "s1", "username": "ann"},
    ),
]

JWT = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0."
    "eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjE3MDAwMDAwMDB9."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)

# (id, text, expected text)
BY_PATTERN: list[tuple[str, str, str]] = [
    ("bearer", "Authorization: Bearer abcdef0123456789", "Authorization: Bearer " + REDACTED),
    ("bearer-lowercase", "bearer abcdef0123456789", "bearer " + REDACTED),
    ("basic", "Basic dXNlcjpwYXNzd29yZA==", "Basic " + REDACTED),
    ("jwt-bare", f"token was {JWT} today", f"token was {REDACTED} today"),
    ("bearer-jwt", f"Bearer {JWT}", "Bearer " + REDACTED),
    (
        "bst-api-key",
        "key bst_4fX9kQ2mZp7LwR3tY8vB1nC6dH0jS5gA_abc123 leaked",
        f"key {REDACTED} leaked",
    ),
    ("bst-refresh", "bst_rt_0123456789abcdefghij", REDACTED),
    ("card-visa", "paid with 4111 1111 1111 1111 ok", f"paid with {REDACTED} ok"),
    ("card-dashes", "4242-4242-4242-4242", REDACTED),
    ("card-plain", "5555555555554444", REDACTED),
    ("card-amex", "378282246310005", REDACTED),
    ("not-luhn-kept", "order 4111 1111 1111 1112", "order 4111 1111 1111 1112"),
    ("short-number-kept", "order 123456789012", "order 123456789012"),
    (
        "query-password",
        "/login?user=ann&password=hunter2&x=1",
        f"/login?user=ann&password={REDACTED}&x=1",
    ),
    ("query-token", "/reset?token=abcdef123", f"/reset?token={REDACTED}"),
    ("query-api-key", "/v1?api_key=abcdef123&q=1", f"/v1?api_key={REDACTED}&q=1"),
    ("cookie-session", "sessionid=abcdef123; theme=dark", f"sessionid={REDACTED}; theme=dark"),
    ("cookie-connect-sid", "connect.sid=s%3Aabc123; Path=/", f"connect.sid={REDACTED}; Path=/"),
    ("cookie-phpsessid", "PHPSESSID=abcdef123456", f"PHPSESSID={REDACTED}"),
    ("json-ish-password", "password:hunter22 retry", f"password:{REDACTED} retry"),
    (
        "lookalike-names-kept",
        "design=modern&inside=1&author=ann",
        "design=modern&inside=1&author=ann",
    ),
    ("url-password", "postgresql://app:s3cr3t@db:5432/x", f"postgresql://app:{REDACTED}@db:5432/x"),
    ("aws-key", "AKIAIOSFODNN7EXAMPLE", REDACTED),
    ("github-token", "ghp_" + "a" * 36, REDACTED),
    ("stripe-key", "sk_live_" + "a" * 24, REDACTED),
    (
        "private-key-block",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
        REDACTED,
    ),
    ("cut-private-key", "x -----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBA", "x " + REDACTED),
    ("plain-text-kept", "GET /api/orders/42 denied", "GET /api/orders/42 denied"),
    ("short-kept", "abc", "abc"),
]


@pytest.mark.parametrize(
    ("detail", "expected"),
    [(detail, expected) for _, detail, expected in BY_NAME],
    ids=[case_id for case_id, _, _ in BY_NAME],
)
def test_fields_named_like_secrets_are_redacted(
    detail: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert Redactor().detail(detail) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in BY_PATTERN],
    ids=[case_id for case_id, _, _ in BY_PATTERN],
)
def test_secret_shapes_are_redacted_in_any_string(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert Redactor().detail({"note": text}) == {"note": expected}
    assert Redactor().text(text, 1000) == expected


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_names_are_matched_case_and_separator_blind() -> None:
    for name in ("PASSWORD", "pass_word", "Api-Key", "api.key", "X_Auth_Token"):
        assert is_secret_name(name.replace("pass_word", "password")), name
    assert not is_secret_name("key_id")


class Level(IntEnum):
    HIGH = 3


class Mode(StrEnum):
    BLOCK = "block"


def test_detail_becomes_plain_json() -> None:
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    detail = {
        "tuple": (1, 2),
        "set": {"b", "a"},
        "big": 2**70,
        "enum": Level.HIGH,
        "mode": Mode.BLOCK,
        "when": moment,
        "bytes": b"\x00raw",
        "surrogate": "bad \udcff byte",
        "deep": {"a": {"b": {"c": {}}}},
    }
    result = Redactor(max_depth=3).detail(detail)
    assert result == {
        "tuple": [1, 2],
        "set": ["a", "b"],
        "big": str(2**70),
        "enum": 3,
        "mode": "block",
        "when": str(moment),
        "bytes": REDACTED,
        "surrogate": "bad \\udcff byte",
        "deep": {"a": {"b": "[TRUNCATED]"}},
    }


async def test_what_is_stored_and_hashed_is_redacted(tmp_path: Any) -> None:
    async with started_stores(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}") as stores:
        log = AuditLog(AuditConfig(), stores.database, stores.keys)
        await log.start()
        await log.emit(
            AuditEvent(
                kind="auth.login.failed",
                actor="Bearer abcdef0123456789",
                target="/login?password=hunter2",
                detail={"password": "hunter2", "headers": {"authorization": "Bearer x"}},
            )
        )
        await log.close()
        (event,), _ = await query_events(stores.database)
    assert "hunter2" not in event.detail_json
    assert event.detail == {"headers": {"authorization": REDACTED}, "password": REDACTED}
    assert event.actor == "Bearer " + REDACTED
    assert event.target == f"/login?password={REDACTED}"


def _luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(prefix + digit):
            return prefix + digit
    raise AssertionError("unreachable: one digit always completes a Luhn number")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_redaction_is_idempotent_and_never_fails(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once
    detail = Redactor().detail({"note": text, text: [text, {"password": text}]})
    assert detail["note"] == Redactor().text(text, 10_000)
    orjson.dumps(detail)  # always encodable, whatever the input held


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=40),
    after=st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=40),
    prefix=st.from_regex(r"[3-6][0-9]{14}", fullmatch=True),
    grouped=st.booleans(),
)
def test_a_valid_card_number_never_survives(
    before: str, after: str, prefix: str, grouped: bool
) -> None:
    number = _luhn_complete(prefix)
    shown = " ".join(number[i : i + 4] for i in range(0, 16, 4)) if grouped else number
    redacted = redact_text(f"{before} {shown} {after}")
    assert number not in redacted.replace(" ", "").replace("-", "")


# Forms a review found secrets surviving in: each must lose its secret, and only it.
MISSED_FORMS = [
    ("json-member", '{"password":"hunter2hunter2"}', f'{{"password":"{REDACTED}"}}'),
    (
        "json-spaced",
        '{"user": "ann", "api_key" : "k3y-9f8e7d6c"}',
        f'{{"user": "ann", "api_key" : "{REDACTED}"}}',
    ),
    ("json-escaped-quote", '{"password":"hun\\"ter2"}', f'{{"password":"{REDACTED}"}}'),
    ("json-in-json", '{\\"token\\":\\"abc123def\\"}', f'{{\\"token\\":\\"{REDACTED}\\"}}'),
    ("json-unterminated", '{"password":"hunter2hunt', f'{{"password":"{REDACTED}'),
    ("header-api-key", "X-Api-Key: 9f8e7d6c5b4a39281706", f"X-Api-Key: {REDACTED}"),
    ("header-password", "password: hunter2hunter2", f"password: {REDACTED}"),
    ("header-authorization", "Authorization: Bearer abc", f"Authorization: Bearer {REDACTED}"),
    (
        "header-cookie",
        "Cookie: theme=dark; sessionid=abc123",
        f"Cookie: {REDACTED}; sessionid={REDACTED}",
    ),
    (
        "repr",
        "Creds(user='bob', password='hunter2hunter2')",
        f"Creds(user='bob', password='{REDACTED}')",
    ),
    ("repr-double", 'Creds(password="hunter2hunter2")', f'Creds(password="{REDACTED}")'),
    ("nested-in-plain-value", "next=/x?token=abcdef123", f"next=/x?token={REDACTED}"),
    ("card-then-cvv", "card 4111 1111 1111 1111 123", f"card {REDACTED} 123"),
    ("number-then-card", "order 12 4111111111111111", f"order 12 {REDACTED}"),
    ("card-between-numbers", "7 4111-1111-1111-1111 43", f"7 {REDACTED} 43"),
    ("two-cards", "4111111111111111 5555555555554444", f"{REDACTED} {REDACTED}"),
    ("card-19", "6011 0000 0000 0000 001", f"{REDACTED}"),
    ("non-card-run-kept", "1234 5678 9012 3456 7890", "1234 5678 9012 3456 7890"),
    ("prose-kept", "note: the token expired", "note: the token expired"),
    ("time-kept", "at 12:30 port=8080", "at 12:30 port=8080"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in MISSED_FORMS],
    ids=[case_id for case_id, _, _ in MISSED_FORMS],
)
def test_secrets_in_json_header_and_repr_forms_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert Redactor().detail({"note": text}) == {"note": expected}
    assert redact_text(expected) == expected


@pytest.mark.parametrize("raw", [bytearray(b"hunter2"), memoryview(b"hunter2")])
def test_every_bytes_like_value_is_redacted(raw: Any) -> None:
    assert Redactor().detail({"raw": raw}) == {"raw": REDACTED}


@pytest.mark.parametrize(
    "secret",
    ["password=hunter2hunter2", "Bearer abcdef0123456789", "4111111111111111", "ghp_" + "a" * 36],
)
def test_a_secret_straddling_the_cut_is_redacted_before_the_cut(secret: str) -> None:
    redactor = Redactor(max_string=64)
    text = "x" * (64 - len(secret) // 2) + " " + secret
    result = redactor.detail({"note": text})["note"]
    assert len(result) <= 64
    visible = secret[: len(secret) // 2]
    assert not result.endswith(visible[-6:]), result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/admin\x00.php", "/admin\\x00.php"),
        ("line\nforged: entry", "line\\x0aforged: entry"),
        ("del\x7f c1\x85", "del\\x7f c1\\x85"),
        ("sep\u2028x", "sep\\u2028x"),
        ("bad \udcff byte", "bad \\udcff byte"),
        ("plain café ✓", "plain café ✓"),
    ],
)
def test_control_characters_and_lone_surrogates_are_escaped(text: str, expected: str) -> None:
    assert clean_text(text) == expected
    assert Redactor().text(text, 100) == expected
    assert Redactor().detail({text: text}) == {expected: expected}
    expected.encode("utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "a=" * 50_000,
        "password:" * 50_000,
        '"password":"' + "\\" * 100_000,
        "1 " * 100_000,
        "4111 " * 50_000,
        "x" * 200_000 + "=",
        " " * 100_000 + "password",
        "a" * 100_000 + ":" + " " * 100_000,
        "'a'" * 50_000,
        '\\"a\\":' * 30_000,
    ],
    ids=[
        "equals",
        "colons",
        "backslashes",
        "digits",
        "groups",
        "long-name",
        "spaces",
        "gap",
        "quotes",
        "escaped",
    ],
)
def test_adversarial_input_is_scanned_in_linear_time(text: str) -> None:
    # Quadratic scans of these would take minutes; the suite would visibly stall.
    result = Redactor(max_string=len(text) * 2).text(text, len(text) * 2)
    assert result is not None
    assert redact_text(result) == result


# A redactor remembers the results for short strings: the memo must never change a result.
SHARED = Redactor()


@pytest.mark.parametrize("repeat", [1, 2, 3])
@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in BY_PATTERN],
    ids=[case_id for case_id, _, _ in BY_PATTERN],
)
def test_a_remembered_string_is_redacted_every_time(text: str, expected: str, repeat: int) -> None:
    """One redactor for every case, each seen three times: in a field, in a list, nested."""
    detail = {"note": text, "list": [text, text], "nested": {"items": [{"x": text}]}}
    assert SHARED.detail(detail) == {
        "note": expected,
        "list": [expected, expected],
        "nested": {"items": [{"x": expected}]},
    }


@pytest.mark.parametrize(
    ("detail", "expected"),
    [(detail, expected) for _, detail, expected in BY_NAME],
    ids=[case_id for case_id, _, _ in BY_NAME],
)
def test_a_remembered_value_under_a_secret_name_is_still_redacted(
    detail: dict[str, Any], expected: dict[str, Any]
) -> None:
    """The memo is keyed by the value alone: a value first seen under an innocent name and
    then under a secret one is redacted whole the second time."""
    redactor = Redactor()
    for value in detail.values():
        redactor.detail({"note": value})
    assert redactor.detail(detail) == expected


def test_the_memo_is_bounded_and_results_stay_right_past_the_bound() -> None:
    redactor = Redactor()
    for number in range(3 * _MEMO_MAX):
        text = f"n{number} password={number}x"
        assert redactor.detail({"a": [text]}) == {"a": [f"n{number} password={REDACTED}"]}
        assert len(redactor._memo) <= _MEMO_MAX


def test_long_strings_are_not_remembered() -> None:
    redactor = Redactor()
    long_text = "x" * _MEMO_LENGTH + " Bearer abcdef0123456789"
    assert redactor.detail({"a": long_text}) == {"a": "x" * _MEMO_LENGTH + " Bearer " + REDACTED}
    assert long_text not in redactor._memo
    assert redactor.detail({"a": long_text}) == {"a": "x" * _MEMO_LENGTH + " Bearer " + REDACTED}


def test_a_string_subclass_is_never_served_from_the_memo() -> None:
    class Shown(str):
        __slots__ = ()

    redactor = Redactor()
    assert redactor.detail({"a": "plain value here"}) == {"a": "plain value here"}
    result = redactor.detail({"a": Shown("plain value here"), "b": [Shown("Bearer abcdef0123")]})
    assert result == {"a": "plain value here", "b": ["Bearer " + REDACTED]}
    assert all(type(value) is str for value in (result["a"], *result["b"]))


NESTED = {"a": {"b": ["x"]}, "c": [["y"]], "d": ["z", ["w", ["v"]]]}


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (1, {"a": "[TRUNCATED]", "c": "[TRUNCATED]", "d": "[TRUNCATED]"}),
        (2, {"a": {"b": "[TRUNCATED]"}, "c": ["[TRUNCATED]"], "d": ["z", "[TRUNCATED]"]}),
        (3, {"a": {"b": ["x"]}, "c": [["y"]], "d": ["z", ["w", "[TRUNCATED]"]]}),
        (4, NESTED),
    ],
)
def test_lists_and_mappings_past_the_depth_bound_are_truncated(
    depth: int, expected: dict[str, Any]
) -> None:
    assert Redactor(max_depth=depth).detail(NESTED) == expected

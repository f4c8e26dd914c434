"""Passwords: username normalisation, the NIST SP 800-63B rules, argon2id hashing."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Iterator
from typing import Any

import argon2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.auth.config import PasswordConfig
from bastion.auth.passwords import (
    USERNAME_MAX_LENGTH,
    PasswordHasher,
    PasswordPolicy,
    common_passwords,
    normalize_username,
)

# The lowest parameters the configuration accepts: fast tests, same code paths.
FAST = PasswordConfig(time_cost=1, memory_cost_kib=8192)


def wide(text: str) -> str:
    """``text`` in full-width forms, as East Asian input methods type it."""
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher(FAST)
    try:
        yield hasher
    finally:
        hasher.close()


# --- usernames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id", "raw", "expected"),
    [
        ("plain", "alice@example.com", "alice@example.com"),
        ("mixed-case", "Alice@Example.COM", "alice@example.com"),
        ("full-width", wide("ALICE") + "@Example.com", "alice@example.com"),
        ("full-width-at-sign", "alice" + wide("@") + "example.com", "alice@example.com"),
        ("surrounding-whitespace", "  bob@example.com\t\n", "bob@example.com"),
        ("surrounding-ideographic-space", "\u3000bob\u3000", "bob"),
        ("german-sharp-s", "Straße", "strasse"),
        ("german-capital-sharp-s", "STRAẞE", "strasse"),
        # Full case folding is locale-independent: the Turkish dotted capital I keeps its dot as
        # a combining mark, and the dotless small i stays distinct from "i".
        ("turkish-dotted-capital-i", "İstanbul", "i\u0307stanbul"),
        ("turkish-dotless-i", "ISTANBUL-\u0131i", "istanbul-\u0131i"),
        ("greek-final-sigma", "ΟΔΥΣΣΕΥΣ", "οδυσσευσ"),
        ("ligature", "ﬁnance", "finance"),
        ("combining-accent", "Jose\u0301", "jos\u00e9"),
        ("precomposed-accent", "JOS\u00c9", "jos\u00e9"),
        ("longest", "a" * USERNAME_MAX_LENGTH, "a" * USERNAME_MAX_LENGTH),
    ],
)
def test_normalize_username(id: str, raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected
    assert normalize_username(expected) == expected


@pytest.mark.parametrize(
    ("id", "raw", "message"),
    [
        ("empty", "", "empty"),
        ("only-whitespace", " \t\n ", "empty"),
        ("internal-space", "alice smith", "spaces"),
        ("internal-tab", "alice\tsmith", "spaces"),
        ("internal-no-break-space", "alice\u00a0smith", "spaces"),
        ("internal-ideographic-space", "alice\u3000smith", "spaces"),
        ("nul", "\x00alice", "control"),
        ("escape", "alice\x1b[0m", "control"),
        ("delete", "alice\x7f", "control"),
        ("zero-width-space", "ali\u200bce", "invisible"),
        ("zero-width-joiner", "ali\u200dce", "invisible"),
        ("right-to-left-override", "\u202eecila", "invisible"),
        ("byte-order-mark", "\ufeffalice", "invisible"),
        ("soft-hyphen", "ali\u00adce", "invisible"),
        ("lone-surrogate", "alice\ud800", "invisible"),
        ("private-use", "alice\ue000", "invisible"),
        ("unassigned", "alice\U000e0080", "invisible"),
        ("too-long", "a" * (USERNAME_MAX_LENGTH + 1), "longer than 320"),
        ("too-long-after-nfkc", "\ufdfa" * 20, "longer than 320"),
        ("huge", "a" * 100_000, "longer than 320"),
    ],
)
def test_normalize_username_refuses(id: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_username(raw)


@given(st.text(max_size=40))
def test_normalized_usernames_are_stable(raw: str) -> None:
    try:
        name = normalize_username(raw)
    except ValueError:
        return
    assert normalize_username(name) == name
    assert unicodedata.is_normalized("NFKC", name)
    assert name == name.strip()


# --- rules ----------------------------------------------------------------------------------

_TAGS = {
    "short": "at least",
    "long": "at most",
    "repeated": "single character",
    "common": "commonly used",
    "username": "username",
}


@pytest.mark.parametrize(
    ("id", "password", "username", "expected"),
    [
        ("acceptable", "correct horse battery staple", None, set()),
        ("exactly-minimum", "xk4!q9Zr", None, set()),
        ("too-short", "xk4!q9Z", None, {"short"}),
        ("empty", "", None, {"short"}),
        ("exactly-maximum", "ab" * 32, None, set()),
        ("too-long", "ab" * 32 + "c", None, {"long"}),
        ("no-composition-rules", "lowercase only words", None, set()),
        ("spaces-allowed", "        x", None, set()),
        ("common", "password", None, {"common"}),
        ("common-any-case", "PassWord", None, {"common"}),
        ("common-full-width", wide("password"), None, {"common"}),
        ("common-and-short", "123456", None, {"short"}),
        ("repeated-char", "zzzzzzzzzz", None, {"repeated"}),
        ("repeated-and-short", "zzz", None, {"short", "repeated"}),
        ("repeated-full-width-digit", wide("11111111"), None, {"repeated", "common"}),
        ("equals-username", "alice.smith@example.com", "Alice.Smith@Example.com", {"username"}),
        ("equals-username-case", "ALICE@EXAMPLE.COM", "alice@example.com", {"username"}),
        ("equals-local-part", "Alice.Smith", "alice.smith@example.com", {"username"}),
        ("equals-full-width-username", wide("alice.smith"), "alice.smith", {"username"}),
        ("contains-username-is-fine", "alice.smith-2024!", "alice.smith@example.com", set()),
        ("eight-char-unicode", "Ünïcödé!", None, set()),
        ("eight-cjk-chars", "密码安全可靠好记", None, set()),
        # Seven emoji: 14 UTF-16 units and 28 UTF-8 bytes, but 7 code points.
        ("seven-emoji", "😀😁😂🤣😃😄😅", None, {"short"}),
        ("eight-emoji", "😀😁😂🤣😃😄😅😆", None, set()),
        # Counted after NFKC: combining accents compose (9 code points → 7), ligatures expand
        # (6 code points → 8).
        ("nfkc-composes", "abcde\u0301o\u0301g", None, {"short"}),
        ("nfkc-expands", "abc\ufb03de", None, set()),
    ],
)
def test_policy(id: str, password: str, username: str | None, expected: set[str]) -> None:
    policy = PasswordPolicy(PasswordConfig(min_length=8, max_length=64))
    problems = policy.problems(password, username=username)
    found = {tag for tag, text in _TAGS.items() if any(text in problem for problem in problems)}
    assert found == expected
    assert len(problems) == len(expected)


def test_policy_compares_with_an_invalid_username_too() -> None:
    policy = PasswordPolicy(PasswordConfig())
    assert policy.problems("Alice Smith", username="alice smith") == [
        "Do not use your username as your password."
    ]


def test_policy_can_allow_common_passwords() -> None:
    policy = PasswordPolicy(PasswordConfig(reject_common=False))
    assert policy.problems("password") == []
    assert PasswordPolicy(PasswordConfig()).problems("password") != []


def test_policy_messages_name_the_configured_lengths() -> None:
    policy = PasswordPolicy(PasswordConfig(min_length=12, max_length=100))
    assert policy.problems("xk4!q9Zr") == ["Use at least 12 characters."]
    assert policy.problems("ab" * 51) == ["Use at most 100 characters."]


def test_common_list_is_loaded_once_and_normalised() -> None:
    words = common_passwords()
    assert common_passwords() is words
    assert len(words) >= 9_000
    assert {"password", "12345678", "iloveyou", "trustno1"} <= words
    assert all(word == word.casefold() and not word.startswith("#") for word in words)


# --- hashing --------------------------------------------------------------------------------


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert await hasher.verify(stored, "correct horse battery staple") is True
    assert await hasher.hash("correct horse battery staple") != stored  # fresh salt


@pytest.mark.parametrize(
    ("id", "typed"),
    [
        ("exact", "pässwörd-" + wide("full")),
        ("combining-accents", "pa\u0308sswo\u0308rd-" + wide("full")),
        ("ascii-instead-of-full-width", "pässwörd-full"),
    ],
)
async def test_verify_matches_nfkc_equivalent_input(
    hasher: PasswordHasher, id: str, typed: str
) -> None:
    stored = await hasher.hash("pässwörd-" + wide("full"))
    assert await hasher.verify(stored, typed) is True


@pytest.mark.parametrize(
    ("id", "wrong"),
    [
        ("other", "correct horse battery stapler"),
        ("case-differs", "Correct horse battery staple"),
        ("empty", ""),
    ],
)
async def test_wrong_password_is_false(hasher: PasswordHasher, id: str, wrong: str) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert await hasher.verify(stored, wrong) is False


class VerifySpy:
    """Records the hashes ``argon2.PasswordHasher.verify`` is called with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashes: list[str] = []
        original = argon2.PasswordHasher.verify

        def verify(hasher: argon2.PasswordHasher, stored: Any, password: Any) -> Any:
            self.hashes.append(stored)
            return original(hasher, stored, password)

        monkeypatch.setattr(argon2.PasswordHasher, "verify", verify)


async def test_unknown_user_does_the_work_of_a_wrong_password(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = await hasher.hash("correct horse battery staple")
    spy = VerifySpy(monkeypatch)

    assert await hasher.verify(None, "correct horse battery staple") is False

    # One full verification against a hash made with the configured parameters: the same work
    # as a wrong password for an existing account.
    assert len(spy.hashes) == 1
    assert argon2.extract_parameters(spy.hashes[0]) == argon2.extract_parameters(real)


@pytest.mark.parametrize(
    ("id", "stored"),
    [
        ("empty", ""),
        ("no-password-marker", "!"),
        ("garbage", "not a hash"),
        ("bcrypt", "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"),
        ("pbkdf2", "pbkdf2_sha256$600000$salt$hash"),
        ("truncated", "$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ"),
        ("bad-base64", "$argon2id$v=19$m=8192,t=1,p=1$!!!!$!!!!"),
        ("bad-parameters", "$argon2id$v=19$m=x,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo"),
    ],
)
async def test_malformed_stored_hash_is_false(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch, id: str, stored: str
) -> None:
    real = await hasher.hash("pw")
    spy = VerifySpy(monkeypatch)
    assert await hasher.verify(stored, "anything at all") is False
    # The dummy verification still runs, so an account without a readable hash is not told
    # apart from one with a wrong password by timing.
    assert argon2.extract_parameters(spy.hashes[-1]) == argon2.extract_parameters(real)


async def test_tampered_hash_is_false(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    head, digest = stored.rsplit("$", 1)
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert await hasher.verify(f"{head}${flipped}", "correct horse battery staple") is False


async def test_needs_rehash_after_parameters_change(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert hasher.needs_rehash(stored) is False

    stronger = PasswordHasher(PasswordConfig(time_cost=2, memory_cost_kib=8192))
    try:
        assert stronger.needs_rehash(stored) is True
        # The old hash still verifies, so the login can rehash transparently.
        assert await stronger.verify(stored, "correct horse battery staple") is True
        rehashed = await stronger.hash("correct horse battery staple")
        assert stronger.needs_rehash(rehashed) is False
        assert hasher.needs_rehash(rehashed) is True
    finally:
        stronger.close()


def test_unreadable_hash_needs_rehash(hasher: PasswordHasher) -> None:
    assert hasher.needs_rehash("not a hash") is True


async def test_default_parameters_round_trip() -> None:
    hasher = PasswordHasher(PasswordConfig())
    try:
        stored = await hasher.hash("correct horse battery staple")
        assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await hasher.verify(stored, "correct horse battery staple") is True
        assert await hasher.verify(stored, "wrong horse battery staple") is False
        assert hasher.needs_rehash(stored) is False
    finally:
        hasher.close()


async def test_hashing_leaves_the_event_loop_running(hasher: PasswordHasher) -> None:
    work = asyncio.ensure_future(hasher.hash("correct horse battery staple"))
    ticks = 0
    while not work.done():
        await asyncio.sleep(0)
        ticks += 1
    # Hashing on the loop's thread would complete inside the task's first step, leaving exactly
    # one tick; off the loop, this coroutine keeps ticking while the hash is computed.
    assert ticks > 1
    assert await hasher.verify(work.result(), "correct horse battery staple") is True


async def test_concurrent_hashes_all_complete(hasher: PasswordHasher) -> None:
    passwords = [f"password number {n}" for n in range(6)]
    hashes = await asyncio.gather(*(hasher.hash(password) for password in passwords))
    results = await asyncio.gather(
        *(
            hasher.verify(stored, password)
            for stored, password in zip(hashes, passwords, strict=True)
        )
    )
    assert results == [True] * len(passwords)


async def test_closed_hasher_refuses_work() -> None:
    hasher = PasswordHasher(FAST)
    hasher.close()
    with pytest.raises(RuntimeError):
        await hasher.hash("correct horse battery staple")


def test_hasher_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="max_threads"):
        PasswordHasher(FAST, max_threads=0)

"""API-key format: generation, checksum, malformed keys, hashing and key ids."""

from __future__ import annotations

import string
import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.auth.api_keys import (
    API_KEY_LENGTH,
    API_KEY_PREFIX,
    BASE62_ALPHABET,
    generate_api_key,
    hash_api_key,
    looks_like_api_key,
    new_key_id,
    well_formed_api_key,
)

BODY = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
# Written out rather than computed with the module under test: CRC32(BODY) = 1546885699, in
# six base62 digits (0-9, A-Z, a-z), is "1ggZdL". Keys already issued depend on this encoding.
VALID = f"bst_{BODY}1ggZdL"


def checksum(body: str) -> str:
    """An independent base62 rendering of CRC32, to check the format rather than the code."""
    value = zlib.crc32(body.encode())
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = BASE62_ALPHABET[digit] + digits
    return digits


def replace(key: str, index: int, char: str) -> str:
    return key[:index] + char + key[index + 1 :]


def test_reference_key_is_well_formed() -> None:
    assert checksum(BODY) == "1ggZdL"
    assert well_formed_api_key(VALID)


def test_alphabet_is_ascii_base62() -> None:
    assert string.digits + string.ascii_uppercase + string.ascii_lowercase == BASE62_ALPHABET


def test_generated_keys_are_well_formed_unique_and_uniform() -> None:
    keys = [generate_api_key() for _ in range(10_000)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert len(key) == API_KEY_LENGTH == 4 + 32 + 6
        assert key.startswith(API_KEY_PREFIX)
        assert set(key[4:]) <= set(BASE62_ALPHABET)
        assert key[-6:] == checksum(key[4:-6])
        assert well_formed_api_key(key)
        assert looks_like_api_key(key)
    # 320,000 body characters: each of the 62 is expected ~5,161 times, standard deviation ~71.
    # Reducing random bytes modulo 62 would make 8 characters 25% more frequent; the 10% band
    # allowed here is seven standard deviations wide.
    counts = Counter(char for key in keys for char in key[4:-6])
    assert set(counts) == set(BASE62_ALPHABET)
    expected = 320_000 / 62
    assert all(abs(count - expected) < expected * 0.1 for count in counts.values())


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("body-char-changed", replace(VALID, 10, "x")),
        ("body-case-changed", replace(VALID, 20, VALID[20].lower())),
        ("checksum-char-changed", replace(VALID, 40, "0")),
        ("checksum-case-changed", replace(VALID, 39, "z")),
        ("adjacent-swap", VALID[:8] + VALID[9] + VALID[8] + VALID[10:]),
        ("wrong-prefix", "bsk_" + VALID[4:]),
        ("uppercase-prefix", "BST_" + VALID[4:]),
        ("no-prefix", VALID[4:]),
        ("prefix-without-underscore", "bst" + VALID[4:] + "0"),
        ("too-short", VALID[:-1]),
        ("too-long", VALID + "0"),
        ("checksum-missing", VALID[:-6]),
        ("prefix-only", API_KEY_PREFIX),
        ("empty", ""),
        ("hyphen", replace(VALID, 12, "-")),
        ("underscore", replace(VALID, 12, "_")),
        ("arabic-indic-digit", replace(VALID, 7, "\u0663")),  # looks like 3
        ("fullwidth-digit", replace(VALID, 7, "\uff13")),
        ("cyrillic-a", replace(VALID, 14, "\u0410")),  # looks like A
        ("leading-space", " " + VALID),
        ("trailing-space", VALID + " "),
        ("trailing-newline", VALID + "\n"),
        ("inner-space", replace(VALID, 20, " ")),
        ("tab", replace(VALID, 20, "\t")),
        ("nul", replace(VALID, 20, "\x00")),
    ],
)
def test_malformed_keys_are_rejected(case: str, value: str) -> None:
    assert not well_formed_api_key(value), case


def test_non_strings_are_not_well_formed() -> None:
    assert not well_formed_api_key(None)  # type: ignore[arg-type]
    assert not well_formed_api_key(VALID.encode())  # type: ignore[arg-type]
    assert not looks_like_api_key(None)  # type: ignore[arg-type]


def test_every_single_base62_substitution_is_detected() -> None:
    # Exhaustive over the reference key: all 38 positions after the prefix, times 61 other
    # characters. CRC32 detects every burst of up to 32 bits, so one changed byte of the body
    # always changes the checksum; one changed checksum digit no longer encodes the CRC.
    for index in range(len(API_KEY_PREFIX), API_KEY_LENGTH):
        for char in BASE62_ALPHABET:
            if char != VALID[index]:
                assert not well_formed_api_key(replace(VALID, index, char)), (index, char)


@given(
    body=st.text(alphabet=BASE62_ALPHABET, min_size=32, max_size=32),
    index=st.integers(min_value=0, max_value=API_KEY_LENGTH - 1),
    char=st.characters(),
)
def test_any_single_substitution_is_detected(body: str, index: int, char: str) -> None:
    key = f"{API_KEY_PREFIX}{body}{checksum(body)}"
    assert well_formed_api_key(key)
    if char != key[index]:
        assert not well_formed_api_key(replace(key, index, char))


@given(st.text())
def test_well_formed_never_raises(value: str) -> None:
    assert well_formed_api_key(value) in (True, False)
    assert looks_like_api_key(value) is value.startswith(API_KEY_PREFIX)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, True),
        ("bst_", True),
        ("bst_short", True),
        (replace(VALID, 10, "x"), True),
        ("BST_" + VALID[4:], False),
        ("Bearer " + VALID, False),
        ("ghp_" + VALID[4:], False),
        ("", False),
    ],
)
def test_looks_like_api_key(value: str, expected: bool) -> None:
    assert looks_like_api_key(value) is expected


def test_hash_is_stable_hex_sha256_of_the_whole_key() -> None:
    # Stored hashes must survive upgrades: pinned for the reference key.
    digest = "ac8f5387100dbbfe8f1bebf146112b87951394026356340d418704c78abd6f36"
    assert hash_api_key(VALID) == digest
    assert hash_api_key(VALID) == hash_api_key(VALID)
    other = generate_api_key()
    assert len(hash_api_key(other)) == 64
    assert set(hash_api_key(other)) <= set("0123456789abcdef")
    assert hash_api_key(other) != digest
    # The prefix is part of what is hashed.
    assert hash_api_key(VALID[4:]) != digest


def test_hash_accepts_any_string() -> None:
    assert len(hash_api_key("bst_\ud800")) == 64


def test_key_ids_are_short_public_and_unique() -> None:
    ids = [new_key_id() for _ in range(1_000)]
    assert len(set(ids)) == len(ids)
    for key_id in ids:
        assert key_id.startswith("key_")
        assert len(key_id) == 16
        assert set(key_id[4:]) <= set(BASE62_ALPHABET)
        assert not looks_like_api_key(key_id)

"""KeyWrapper: AES-256-GCM with the row's identity authenticated."""

from __future__ import annotations

import pytest

from bastion.store.errors import StoreError
from bastion.store.wrapping import KeyWrapper, parse_key_encryption_key

KEK = bytes(range(32))


def test_wrap_round_trips_with_fresh_nonces() -> None:
    wrapper = KeyWrapper(KEK)
    first = wrapper.wrap(b"material", context=b"row-1")
    second = wrapper.wrap(b"material", context=b"row-1")
    assert first != second
    assert wrapper.unwrap(first, context=b"row-1") == b"material"
    assert wrapper.unwrap(second, context=b"row-1") == b"material"


@pytest.mark.parametrize(
    ("id", "tamper", "message"),
    [
        ("other-context", lambda blob: (blob, b"row-2"), "not the key that wrapped it"),
        ("flipped-bit", lambda blob: (blob[:-1] + bytes([blob[-1] ^ 1]), b"row-1"), "not the key"),
        ("unknown-version", lambda blob: (b"\x02" + blob[1:], b"row-1"), "unknown format"),
        ("truncated", lambda blob: (blob[:13], b"row-1"), "unknown format"),
    ],
)
def test_tampering_is_detected(id: str, tamper: object, message: str) -> None:
    wrapper = KeyWrapper(KEK)
    blob, context = tamper(wrapper.wrap(b"material", context=b"row-1"))  # type: ignore[operator]
    with pytest.raises(StoreError, match=message):
        wrapper.unwrap(blob, context=context)


def test_a_different_key_does_not_unwrap() -> None:
    blob = KeyWrapper(KEK).wrap(b"material", context=b"row-1")
    with pytest.raises(StoreError, match="not the key that wrapped it"):
        KeyWrapper(bytes(32)).unwrap(blob, context=b"row-1")


def test_raw_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyWrapper(b"too short")


def test_parse_strips_whitespace_and_accepts_both_alphabets() -> None:
    standard = "+" * 43 + "="
    assert len(parse_key_encryption_key(f"  {standard}\n")) == 32
    assert parse_key_encryption_key("-" * 43 + "=") == parse_key_encryption_key(standard)


def test_parse_refuses_non_ascii() -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        parse_key_encryption_key("clé")

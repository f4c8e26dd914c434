"""AES-256-GCM wrapping of stored key material with ``store.key_encryption_key``."""

from __future__ import annotations

import binascii
import os
from base64 import b64decode, urlsafe_b64decode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.store.errors import StoreError

__all__ = ["KEY_ENCRYPTION_KEY_SIZE", "KeyWrapper", "parse_key_encryption_key"]

KEY_ENCRYPTION_KEY_SIZE = 32
_FORMAT_V1 = b"\x01"
_NONCE_SIZE = 12
_GENERATE_HINT = (
    'generate one with: python -c "import base64, os; print(base64.b64encode(os.urandom(32))'
    '.decode())"'
)


def parse_key_encryption_key(value: str) -> bytes:
    """Decode a base64 (standard or URL-safe) key-encryption key and check it is 32 bytes.

    Raises :class:`ValueError` with a message that says how to make a valid one.
    """
    try:
        text = value.strip().encode("ascii")
        try:
            raw = b64decode(text, validate=True)
        except binascii.Error:
            raw = urlsafe_b64decode(text)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(
            f"store.key_encryption_key is not valid base64; {_GENERATE_HINT}"
        ) from None
    if len(raw) != KEY_ENCRYPTION_KEY_SIZE:
        raise ValueError(
            f"store.key_encryption_key must decode to {KEY_ENCRYPTION_KEY_SIZE} bytes, "
            f"not {len(raw)}; {_GENERATE_HINT}"
        )
    return raw


class KeyWrapper:
    """Encrypts key material at rest; ``context`` (the row's identity) is authenticated too, so
    a wrapped value copied onto another row does not unwrap."""

    def __init__(self, key_encryption_key: bytes) -> None:
        if len(key_encryption_key) != KEY_ENCRYPTION_KEY_SIZE:
            raise ValueError(f"a key-encryption key is {KEY_ENCRYPTION_KEY_SIZE} bytes")
        self._aead = AESGCM(key_encryption_key)

    @classmethod
    def from_base64(cls, value: str) -> KeyWrapper:
        """A wrapper for the configured base64 key (see :func:`parse_key_encryption_key`)."""
        return cls(parse_key_encryption_key(value))

    def wrap(self, material: bytes, *, context: bytes) -> bytes:
        """``version || nonce || ciphertext+tag``, with a fresh random nonce."""
        nonce = os.urandom(_NONCE_SIZE)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, material, context)

    def unwrap(self, blob: bytes, *, context: bytes) -> bytes:
        """The material; :class:`StoreError` when the key or ``context`` does not match."""
        if len(blob) <= 1 + _NONCE_SIZE or blob[:1] != _FORMAT_V1:
            raise StoreError("wrapped key material has an unknown format")
        nonce, ciphertext = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, ciphertext, context)
        except InvalidTag:
            raise StoreError(
                "cannot unwrap key material: store.key_encryption_key is not the key that "
                "wrapped it"
            ) from None

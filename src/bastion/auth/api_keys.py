"""API keys: ``bst_`` + 32 random base62 characters + a 6-character base62 CRC32 checksum.

The checksum lets Bastion (and secret scanners) tell a Bastion key from random text and catch
typos without a database lookup: a malformed key is refused before any query runs. CRC32
detects every error burst of up to 32 bits, so any single changed character in the random part
changes the checksum; a changed checksum character no longer equals the one encoding of the
CRC. The checksum is public knowledge, so it adds no secrecy: the 32 random characters
(about 190 bits) are the secret, and only their SHA-256 (of the whole key) is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

__all__ = [
    "API_KEY_LENGTH",
    "API_KEY_PREFIX",
    "BASE62_ALPHABET",
    "KEY_ID_PREFIX",
    "generate_api_key",
    "hash_api_key",
    "looks_like_api_key",
    "new_key_id",
    "well_formed_api_key",
]

API_KEY_PREFIX = "bst_"
"""Marks a Bastion credential; secret scanners match on it."""

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""The characters of the random part, the checksum and key ids (ASCII letters and digits)."""

KEY_ID_PREFIX = "key_"
"""Prefix of the public id under which a key is listed and revoked."""

_BODY_LENGTH = 32
_CHECKSUM_LENGTH = 6  # 62**6 > 2**32: every CRC32 value fits in six base62 digits
_KEY_ID_LENGTH = 12  # 62**12 ≈ 2**71: collisions are not a practical concern

API_KEY_LENGTH = len(API_KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
"""Length of every well-formed key (42)."""

# An explicit ASCII class: ``\w`` or ``str.isalnum`` would accept Unicode digits and letters
# (for example Arabic-Indic digits) that look like base62 but are not.
_SHAPE = re.compile(
    re.escape(API_KEY_PREFIX)
    + f"([0-9A-Za-z]{{{_BODY_LENGTH}}})([0-9A-Za-z]{{{_CHECKSUM_LENGTH}}})"
)


def _random_base62(length: int) -> str:
    # secrets.choice draws an index with randbelow, so every character is equally likely
    # (no modulo bias from reducing random bytes by 62).
    return "".join(secrets.choice(BASE62_ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(_CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62_ALPHABET[digit])
    return "".join(reversed(digits))


def generate_api_key() -> str:
    """Return a new random API key; show it to its owner once and store only its hash."""
    body = _random_base62(_BODY_LENGTH)
    return f"{API_KEY_PREFIX}{body}{_checksum(body)}"


def well_formed_api_key(value: str) -> bool:
    """Whether ``value`` has the exact prefix, length, alphabet and a correct checksum.

    Never raises: any other input, including non-strings, is simply not well formed.
    """
    if not isinstance(value, str) or len(value) != API_KEY_LENGTH:
        return False
    shape = _SHAPE.fullmatch(value)
    return shape is not None and _checksum(shape[1]) == shape[2]


def looks_like_api_key(value: str) -> bool:
    """Whether ``value`` claims to be a Bastion key (starts with the prefix), even if malformed.

    Such a credential is Bastion's to judge: a malformed one gets 401 rather than being passed to
    the upstream as someone else's credential.
    """
    return isinstance(value, str) and value.startswith(API_KEY_PREFIX)


def hash_api_key(key: str) -> str:
    """Hex SHA-256 of the whole key: what the database stores and looks keys up by.

    A plain hash suffices (no salt or slow hash) because the key holds ~190 random bits, far
    beyond any guessing attack, and lookups must be by an exact, indexable value.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key_id() -> str:
    """Return a short public id for listing and revoking a key, e.g. ``key_3fA9xQ0bLm2Z``."""
    return KEY_ID_PREFIX + _random_base62(_KEY_ID_LENGTH)

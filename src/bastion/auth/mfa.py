"""TOTP second factor (RFC 6238): codes, enrolment URIs and QR codes, the encryption of secrets
at rest, and backup codes.

What this module does not do, by design, is remember anything: replay protection and single use
are enforced by the caller in SQL, where every instance sees the same state.

- **TOTP replay.** :meth:`Totp.matching_step` returns the time step a code belongs to. The caller
  keeps the highest step it accepted for each user and accepts a code only if its step is
  greater, updating that value in the same statement (``UPDATE … SET last_step = :step WHERE
  user_id = :id AND last_step < :step`` and checking one row changed). A code is therefore good
  once, and so is every code of an earlier step.
- **Backup codes.** The caller stores the keyed :meth:`BackupCodes.hash` of each code and
  consumes one with a ``DELETE … WHERE user_id = :id AND code_hash = :hash`` (or an ``UPDATE``
  of a ``used_at`` column) that must affect exactly one row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.auth.config import MfaConfig
from bastion.store.keys import KeyStore, NewKey, StoredKey

__all__ = [
    "MFA_KEY_PURPOSE",
    "BackupCodes",
    "MfaSecretError",
    "SecretCipher",
    "Totp",
    "qr_codes",
]

MFA_KEY_PURPOSE = "mfa_encryption"
"""Purpose of the keys in ``bastion_keys`` that encrypt TOTP secrets."""

_DIGESTS: dict[str, Callable[..., Any]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
# RFC 6238's reference secrets are as long as the HMAC's output; RFC 4226 §4 asks for at least
# 128 bits and recommends 160.
_SECRET_BYTES = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
_ASCII_DIGITS = frozenset("0123456789")


class Totp:
    """Time-based one-time passwords with the parameters of ``[auth.mfa]``."""

    def __init__(self, config: MfaConfig) -> None:
        self._digits = config.digits
        self._period = config.period
        self._window = config.window
        self._algorithm = config.algorithm
        self._digest = _DIGESTS[config.algorithm]
        self._issuer = config.issuer

    def new_secret(self) -> str:
        """A fresh random secret, base32 without padding, as long as the HMAC's output (160
        bits for SHA1, 256 for SHA256, 512 for SHA512)."""
        raw = secrets.token_bytes(_SECRET_BYTES[self._algorithm])
        return base64.b32encode(raw).decode("ascii").rstrip("=")

    def code_at(self, secret: str, at: float) -> str:
        """The code for Unix time ``at``. Raises :class:`ValueError` if ``secret`` is not
        base32 of at least 112 bits (so does :meth:`matching_step`)."""
        return self._hotp(secret).at(self._step(at))

    def matching_step(self, secret: str, code: str, *, at: float) -> int | None:
        """The time step (``int(at // period)``), within ``window`` steps of the one containing
        ``at``, whose code is ``code``; ``None`` when there is none.

        ``code`` may contain spaces ("123 456"); anything else that is not exactly ``digits``
        ASCII digits is refused without computing a code. Every candidate step is computed and
        compared in constant time, so the time taken does not tell which step (if any) matched.
        If two steps happen to share the code, the latest is returned: the caller then refuses
        both steps afterwards.

        The caller enforces replay protection (see the module documentation): it accepts the
        returned step only if it is greater than the highest step it accepted before for this
        user, and stores it.
        """
        cleaned = code.replace(" ", "")
        if len(cleaned) != self._digits or not set(cleaned) <= _ASCII_DIGITS:
            return None
        given = cleaned.encode("ascii")
        hotp = self._hotp(secret)
        current = self._step(at)
        matched: int | None = None
        for step in range(current - self._window, current + self._window + 1):
            if step < 0:
                continue
            if hmac.compare_digest(hotp.at(step).encode("ascii"), given):
                matched = step
        return matched

    def provisioning_uri(self, secret: str, *, account: str) -> str:
        """The ``otpauth://totp/`` URI an authenticator app enrols from (Google Authenticator
        key URI format), always naming issuer, algorithm, digits and period so that no app
        falls back to a default that differs from the configuration."""
        label = f"{quote(self._issuer, safe='')}:{quote(account, safe='@')}"
        query = urlencode(
            {
                "secret": secret.rstrip("="),
                "issuer": self._issuer,
                "algorithm": self._algorithm,
                "digits": self._digits,
                "period": self._period,
            },
            quote_via=quote,
        )
        return f"otpauth://totp/{label}?{query}"

    def _step(self, at: float) -> int:
        return int(at // self._period)

    def _hotp(self, secret: str) -> pyotp.HOTP:
        return pyotp.HOTP(secret, digits=self._digits, digest=self._digest)


def qr_codes(uri: str) -> tuple[str, str]:
    """The QR code of ``uri`` as SVG text and as base64-encoded PNG, for enrolment screens."""
    # Error level M survives a slightly blurred phone camera while keeping the symbol small.
    qr = segno.make_qr(uri, error="m")
    svg = io.BytesIO()
    qr.save(svg, kind="svg", scale=4, border=4, xmldecl=False, svgns=True, nl=False)
    png = io.BytesIO()
    qr.save(png, kind="png", scale=5, border=4)
    return svg.getvalue().decode("utf-8"), base64.b64encode(png.getvalue()).decode("ascii")


class MfaSecretError(Exception):
    """A stored TOTP secret cannot be decrypted: its key is not (or no longer) active, or the
    ciphertext does not authenticate (tampered, or stored under another user)."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


_CIPHER_ALGORITHM = "A256GCM"
_CIPHER_KEY_BYTES = 32
_NONCE_BYTES = 12
_FORMAT_V1 = b"\x01"
_AAD_LABEL = b"bastion.mfa.secret.v1"


def _new_cipher_key() -> NewKey:
    return NewKey(_CIPHER_ALGORITHM, os.urandom(_CIPHER_KEY_BYTES))


def _associated_data(key_id: str, user_id: str) -> bytes:
    """Binds a ciphertext to its user (and key): length-prefixed, so no two (key, user) pairs
    encode alike."""
    parts = (key_id.encode("utf-8"), user_id.encode("utf-8"))
    return _AAD_LABEL + b"".join(len(part).to_bytes(4, "big") + part for part in parts)


class SecretCipher:
    """AES-256-GCM encryption of TOTP secrets at rest, with keys of purpose
    :data:`MFA_KEY_PURPOSE` from the key store.

    The newest active key encrypts; every active key decrypts. The associated data names the
    user, so a ciphertext copied onto another account does not decrypt.

    Keys are read by :meth:`load` and kept in memory. After another instance rotates, this one
    meets ciphertexts under a key it has not read yet: :meth:`ensure_key` reloads in that case,
    so callers run ``await cipher.ensure_key(key_id)`` before :meth:`decrypt`.

    A rotation keeps the ``keep`` newest keys; secrets under older keys no longer decrypt. Re-
    encrypt each secret for which :meth:`needs_reencrypt` is true (at its next successful use,
    or all at once with :meth:`reencrypt`) before rotating ``keep - 1`` more times.
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._keys: dict[str, AESGCM] = {}
        self._newest: str | None = None

    async def load(self) -> None:
        """Read the active keys, creating the first one if there is none."""
        self._use(await self._store.get_or_create(MFA_KEY_PURPOSE, _new_cipher_key))

    async def rotate(self, *, keep: int = 2) -> None:
        """Make a new key the encrypting one; the ``keep - 1`` previous keys keep decrypting."""
        if keep < 2:
            raise ValueError("keep must be at least 2, or existing TOTP secrets stop decrypting")
        self._use(await self._store.rotate(MFA_KEY_PURPOSE, _new_cipher_key, keep=keep))

    async def ensure_key(self, key_id: str) -> None:
        """Reload the active keys if ``key_id`` is not one of them (another instance rotated)."""
        if key_id not in self._keys:
            self._use(await self._store.active(MFA_KEY_PURPOSE))

    def encrypt(self, secret: str, *, user_id: str) -> tuple[str, bytes]:
        """``(key_id, blob)`` for ``secret`` under the newest key; store both."""
        key_id = self._require_newest()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[key_id].encrypt(
            nonce, secret.encode("utf-8"), _associated_data(key_id, user_id)
        )
        return key_id, _FORMAT_V1 + nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, *, user_id: str) -> str:
        """The secret in ``blob``; :class:`MfaSecretError` if ``key_id`` is not an active key or
        the blob does not authenticate for ``user_id``."""
        aead = self._keys.get(key_id)
        if aead is None:
            raise MfaSecretError(f"MFA key {key_id!r} is not active", key_id=key_id)
        if len(blob) <= 1 + _NONCE_BYTES or blob[:1] != _FORMAT_V1:
            raise MfaSecretError("the encrypted TOTP secret has an unknown format", key_id=key_id)
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plain = aead.decrypt(nonce, sealed, _associated_data(key_id, user_id))
        except InvalidTag:
            raise MfaSecretError(
                "the encrypted TOTP secret does not authenticate for this user", key_id=key_id
            ) from None
        return plain.decode("utf-8")

    def needs_reencrypt(self, key_id: str) -> bool:
        """Whether a secret stored under ``key_id`` should be encrypted again with the newest
        key (it is under an older one)."""
        return key_id != self._require_newest()

    def reencrypt(self, key_id: str, blob: bytes, *, user_id: str) -> tuple[str, bytes]:
        """``blob`` decrypted and encrypted again under the newest key."""
        return self.encrypt(self.decrypt(key_id, blob, user_id=user_id), user_id=user_id)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The active key ids, newest (the encrypting one) first."""
        return tuple(self._keys)

    def _use(self, keys: list[StoredKey]) -> None:
        if not keys:
            raise MfaSecretError("the key store holds no active MFA key", key_id="")
        # Dicts keep insertion order, and the store lists keys newest first.
        self._keys = {key.id: AESGCM(key.material) for key in keys}
        self._newest = keys[0].id

    def _require_newest(self) -> str:
        if self._newest is None:
            raise RuntimeError("SecretCipher.load() has not been awaited")
        return self._newest


# Crockford's base32 alphabet: no i, l, o or u, so no code can be misread as another.
_BACKUP_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_BACKUP_CHARS = frozenset(_BACKUP_ALPHABET)
_BACKUP_LENGTH = 10
_BACKUP_SEPARATORS = re.compile(r"[\s-]+")
# Letters people type for the digits they look like (Crockford's decoding rules).
_BACKUP_ALIASES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_BACKUP_DOMAIN = b"bastion.mfa.backup-code.v1"


class BackupCodes:
    """Single-use recovery codes: ten characters (50 bits) of Crockford base32, shown as
    ``xxxxx-xxxxx``. Only their :meth:`hash` is stored."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError("count must not be negative")
        self._count = count

    def generate(self) -> list[str]:
        """``count`` distinct new codes, formatted for display."""
        codes: dict[str, None] = {}
        while len(codes) < self._count:
            raw = "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(_BACKUP_LENGTH))
            codes[f"{raw[:5]}-{raw[5:]}"] = None
        return list(codes)

    @staticmethod
    def normalize(code: str) -> str | None:
        """The ten characters of ``code`` without spaces or hyphens, lowercase, with ``o``
        read as ``0`` and ``i``/``l`` as ``1``; ``None`` if that is not a well-formed code."""
        compact = _BACKUP_SEPARATORS.sub("", code).lower().translate(_BACKUP_ALIASES)
        if len(compact) != _BACKUP_LENGTH or not set(compact) <= _BACKUP_CHARS:
            return None
        return compact

    @staticmethod
    def hash(key: bytes, user_id: str, code: str) -> str:
        """Hex HMAC-SHA256, under ``key`` (a secret kept in ``bastion_keys``), of the normalised
        code bound to ``user_id`` and to this use, for storage and lookup. Keyed, so a copy of
        the table alone cannot be searched offline for the codes' 50 bits. Raises
        :class:`ValueError` for a malformed code or an empty key."""
        if not key:
            raise ValueError("a backup-code key is required")
        normalized = BackupCodes.normalize(code)
        if normalized is None:
            raise ValueError("not a backup code")
        user = user_id.encode("utf-8")
        digest = hmac.new(key, _BACKUP_DOMAIN, hashlib.sha256)
        digest.update(len(user).to_bytes(4, "big") + user)
        digest.update(normalized.encode("ascii"))
        return digest.hexdigest()

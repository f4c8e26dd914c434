"""The audit HMAC keys: generated on first start in ``bastion_keys``, rotated by
``bastion keys rotate-audit``.

Rotation never retires an audit key: the newest one hashes new rows and every older one keeps
verifying the rows that name it, however old (a row records its ``key_id``).

With ``store.key_encryption_key`` configured, the HMAC key of a row is not the stored material
itself but ``HMAC-SHA256(key_encryption_key, "bastion.audit.key:" + key_id + ":" + material)``:
someone who can write ``bastion_keys`` could insert an unwrapped key of their choosing and
recompute the chain with it; bound to the key-encryption key, which is never in the database,
such a key verifies nothing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable

from bastion.audit.chain import SigningKey
from bastion.store.config import StoreConfig
from bastion.store.keys import KeyStore, NewKey

__all__ = ["AUDIT_KEY_PURPOSE", "AuditKeyring", "KeyLookup", "binding_secret"]

AUDIT_KEY_PURPOSE = "audit_hmac"
_KEY_BYTES = 32
# Rotation keeps this many generations active: in effect all of them.
_KEEP_ALL = 2**31 - 1

KeyLookup = Callable[[str], Awaitable[bytes | None]]
"""``key_id`` → HMAC key material, or ``None`` when no such audit key exists."""


def binding_secret(config: StoreConfig) -> bytes | None:
    """The secret audit keys are bound to: ``store.key_encryption_key`` as configured (UTF-8),
    or ``None`` without one."""
    secret = config.key_encryption_key
    return secret.get_secret_value().encode("utf-8") if secret else None


def _new_audit_key() -> NewKey:
    return NewKey(algorithm="HMAC-SHA256", material=os.urandom(_KEY_BYTES))


class AuditKeyring:
    """The audit keys of a :class:`KeyStore`, cached; :meth:`lookup` is a :data:`KeyLookup`."""

    def __init__(self, store: KeyStore, *, binding: bytes | None = None) -> None:
        self._store = store
        self._binding = binding
        self._keys: dict[str, bytes] = {}
        self._signing: SigningKey | None = None

    @property
    def signing(self) -> SigningKey | None:
        """The newest key as of the last :meth:`load` (``None`` before it)."""
        return self._signing

    async def load(self) -> SigningKey:
        """Read the keys, creating the first one if there is none; returns the newest."""
        keys = await self._store.get_or_create(AUDIT_KEY_PURPOSE, _new_audit_key)
        self._use([(key.id, key.material) for key in keys])
        assert self._signing is not None
        return self._signing

    async def rotate(self) -> SigningKey:
        """Add a new newest key (older ones keep verifying); returns it."""
        keys = await self._store.rotate(AUDIT_KEY_PURPOSE, _new_audit_key, keep=_KEEP_ALL)
        self._use([(key.id, key.material) for key in keys])
        assert self._signing is not None
        return self._signing

    async def lookup(self, key_id: str) -> bytes | None:
        """The material of ``key_id``; reloads once when it is not known yet (rotated by
        another process). Never creates a key."""
        material = self._keys.get(key_id)
        if material is None:
            keys = await self._store.active(AUDIT_KEY_PURPOSE)
            if keys:
                self._use([(key.id, key.material) for key in keys])
            material = self._keys.get(key_id)
        return material

    def _use(self, keys: list[tuple[str, bytes]]) -> None:
        bound = [(key_id, self._bind(key_id, material)) for key_id, material in keys]
        self._keys.update(bound)
        key_id, material = bound[0]
        self._signing = SigningKey(key_id, material)

    def _bind(self, key_id: str, material: bytes) -> bytes:
        if self._binding is None:
            return material
        message = b"bastion.audit.key:" + key_id.encode("utf-8") + b":" + material
        return hmac.digest(self._binding, message, "sha256")

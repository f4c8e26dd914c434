"""The audit HMAC keys: generated on first start in ``bastion_keys``, rotated by
``bastion keys rotate-audit``.

Rotation never retires an audit key: the newest one hashes new rows and every older one keeps
verifying the rows that name it, however old (a row records its ``key_id``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from bastion.audit.chain import SigningKey
from bastion.store.keys import KeyStore, NewKey

__all__ = ["AUDIT_KEY_PURPOSE", "AuditKeyring", "KeyLookup"]

AUDIT_KEY_PURPOSE = "audit_hmac"
_KEY_BYTES = 32
# Rotation keeps this many generations active: in effect all of them.
_KEEP_ALL = 2**31 - 1

KeyLookup = Callable[[str], Awaitable[bytes | None]]
"""``key_id`` → HMAC key material, or ``None`` when no such audit key exists."""


def _new_audit_key() -> NewKey:
    return NewKey(algorithm="HMAC-SHA256", material=os.urandom(_KEY_BYTES))


class AuditKeyring:
    """The audit keys of a :class:`KeyStore`, cached; :meth:`lookup` is a :data:`KeyLookup`."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
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
        self._keys.update(keys)
        key_id, material = keys[0]
        self._signing = SigningKey(key_id, material)

"""What the request path knows about accounts, cached and dropped on change.

A request with a token this process has already verified costs a few dictionary look-ups: the
token's entry (principal, expiry) and nothing else. Entries are dropped the moment the change
feed reports a revoked session, a changed account or a revoked key, and account snapshots are
re-read at most ``auth.status_cache_ttl`` after loading, so a missed change cannot live long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bastion.auth.repository import IdentityStore
from bastion.http.principal import Principal

__all__ = ["AccountCache", "AccountSnapshot", "CachedCredential", "CredentialCache"]


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """An account as authorization needs it."""

    user_id: str
    username: str
    status: str
    roles: tuple[str, ...]
    """Global roles."""
    resource_roles: dict[str, tuple[str, ...]]
    """Roles granted on single resources: ``"projects:42" -> ("project_editor",)``."""
    tokens_valid_after: float | None
    """Epoch seconds; access tokens issued earlier are refused."""
    mfa_enabled: bool

    def roles_on(self, resource: str) -> tuple[str, ...]:
        """Roles granted on ``resource`` (not counting global roles)."""
        return self.resource_roles.get(resource, ())


class AccountCache:
    """Account snapshots by user id, each kept at most ``ttl`` seconds."""

    def __init__(
        self,
        store: IdentityStore,
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[AccountSnapshot, float]] = {}
        self.generation = 0
        """Bumped by every drop: a load that straddles one is not cached."""

    async def get(self, user_id: str) -> AccountSnapshot | None:
        """The account of ``user_id``, from the cache while fresh; ``None`` if it is gone."""
        entry = self._entries.get(user_id)
        now = self._clock()
        if entry is not None and entry[1] > now:
            return entry[0]
        generation = self.generation
        snapshot = await self.load(user_id)
        # A change announced while the load was in flight may not be in what it read: such a
        # snapshot is used for this request but not remembered.
        if snapshot is not None and self._ttl > 0 and generation == self.generation:
            self._entries[user_id] = (snapshot, now + self._ttl)
        return snapshot

    async def load(self, user_id: str) -> AccountSnapshot | None:
        """Read the account from the store, bypassing the cache."""
        user = await self._store.user(user_id)
        if user is None:
            return None
        grants = await self._store.grants(user_id)
        roles = tuple(sorted(role for role, resource in grants if not resource))
        per_resource: dict[str, list[str]] = {}
        for role, resource in grants:
            if resource:
                per_resource.setdefault(resource, []).append(role)
        return AccountSnapshot(
            user_id=user.id,
            username=user.username,
            status=user.status,
            roles=roles,
            resource_roles={key: tuple(sorted(value)) for key, value in per_resource.items()},
            tokens_valid_after=_epoch(user.tokens_valid_after),
            mfa_enabled=user.mfa_enabled,
        )

    def drop(self, user_id: str) -> None:
        self.generation += 1
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


@dataclass(slots=True)
class CachedCredential:
    """A verified credential: the principal it proved and until when that holds."""

    principal: Principal
    expires: float
    """Epoch seconds: the token's ``exp`` or the key's expiry (``inf`` when none)."""
    fresh_until: float
    """Monotonic seconds: re-check the account after this."""
    user_id: str
    session_id: str | None
    key_id: str | None


class CredentialCache:
    """Verified credentials by their presented value, bounded, with indexes so a change to a
    user, session or key drops every entry it affects."""

    def __init__(self, *, size: int) -> None:
        self._size = size
        self._entries: dict[str, CachedCredential] = {}
        self._by_user: dict[str, set[str]] = {}
        self._by_session: dict[str, set[str]] = {}
        self._by_key: dict[str, set[str]] = {}

    def get(self, credential: str) -> CachedCredential | None:
        return self._entries.get(credential)

    def put(self, credential: str, entry: CachedCredential) -> None:
        if self._size <= 0:
            return
        if credential not in self._entries and len(self._entries) >= self._size:
            # Insertion order: the oldest entry goes. A flood of distinct valid tokens only
            # costs re-verification, never correctness.
            self.discard(next(iter(self._entries)))
        self._entries[credential] = entry
        self._by_user.setdefault(entry.user_id, set()).add(credential)
        if entry.session_id is not None:
            self._by_session.setdefault(entry.session_id, set()).add(credential)
        if entry.key_id is not None:
            self._by_key.setdefault(entry.key_id, set()).add(credential)

    def discard(self, credential: str) -> None:
        entry = self._entries.pop(credential, None)
        if entry is None:
            return
        _unindex(self._by_user, entry.user_id, credential)
        if entry.session_id is not None:
            _unindex(self._by_session, entry.session_id, credential)
        if entry.key_id is not None:
            _unindex(self._by_key, entry.key_id, credential)

    def drop_user(self, user_id: str) -> None:
        for credential in list(self._by_user.get(user_id, ())):
            self.discard(credential)

    def drop_session(self, session_id: str) -> None:
        for credential in list(self._by_session.get(session_id, ())):
            self.discard(credential)

    def drop_key(self, key_id: str) -> None:
        for credential in list(self._by_key.get(key_id, ())):
            self.discard(credential)

    def clear(self) -> None:
        """Forget every credential (the signing keys changed)."""
        self._entries.clear()
        self._by_user.clear()
        self._by_session.clear()
        self._by_key.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _unindex(index: dict[str, set[str]], key: str, credential: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(credential)
        if not members:
            del index[key]


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None

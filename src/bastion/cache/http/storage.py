"""Stored responses in the tiered cache: finding the entry a request selects, storing one for
as long as it can serve, forgetting one, and invalidating by path.

A response without ``Vary`` is stored under its primary key. One with ``Vary`` is stored under
its variant's key, and the primary key holds an index naming the varied fields (held as long as
its longest-held variant), so a look-up is one read, or two for a varied resource. An entry is
held for its remaining freshness plus the longest time it may still serve stale
(``stale-while-revalidate``, ``stale-if-error``) or, with a validator, be revalidated
(``revalidate_window``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from bastion.cache.http.entry import Entry
from bastion.cache.http.keys import path_tag, variant_key, vary_source
from bastion.cache.http.policy import vary_values
from bastion.http.asgi import Scope

__all__ = ["ResponseEntries", "ResponseStore", "selects"]


class ResponseStore(Protocol):
    """The part of :class:`bastion.cache.Cache` the stage uses (its ``http`` namespace)."""

    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Any = ()
    ) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def invalidate_tag(self, tag: str) -> int: ...


def selects(entry: Entry, scope: Scope) -> bool:
    """Whether the request ``scope`` selects ``entry`` (same values of the varied fields)."""
    varied: list[bytes] = entry["vary"]
    return not varied or vary_values(vary_source(scope), varied) == entry["varies"]


class ResponseEntries:
    """The stage's entries in ``store``."""

    def __init__(self, store: ResponseStore, *, revalidate_window: float) -> None:
        self._store = store
        self._window = revalidate_window

    async def lookup(self, primary: str, scope: Scope) -> Entry | None:
        """The entry the request ``scope`` selects under ``primary``, fresh or stale."""
        value = await self._store.get(primary)
        if value is None:
            return None
        if "index" in value:
            variant = variant_key(primary, vary_values(vary_source(scope), value["index"]))
            value = await self._store.get(variant)
            if value is None:
                return None
        if value["vary"] and not selects(value, scope):
            return None
        entry: Entry = value
        return entry

    async def keep(self, primary: str, entry: Entry) -> bool:
        """Store ``entry`` for as long as it can serve; whether it was stored."""
        remaining = entry["lifetime"] - entry["age"]
        hold = max(entry["swr"], 0 if entry["strict"] else entry["sie"])
        if entry["etag"] or entry["modified_raw"]:
            hold = max(hold, self._window)
        ttl = max(remaining, 0.0) + hold
        if ttl <= 0:
            return False
        tags = entry["tags"]
        if entry["vary"]:
            until = time.time() + ttl
            index = await self._store.get(primary)
            if index is not None and index.get("index") == entry["vary"]:
                until = max(until, index.get("until", 0.0))
            await self._store.set(
                primary,
                {"index": entry["vary"], "until": until},
                ttl=until - time.time(),
                tags=tags[:1],
            )
            await self._store.set(variant_key(primary, entry["varies"]), entry, ttl=ttl, tags=tags)
        else:
            await self._store.set(primary, entry, ttl=ttl, tags=tags)
        return True

    async def forget(self, primary: str, entry: Entry) -> None:
        """Remove ``entry`` (stored under ``primary``)."""
        if entry["vary"]:
            await self._store.delete(variant_key(primary, entry["varies"]))
        else:
            await self._store.delete(primary)

    async def invalidate_paths(self, paths: Iterable[str]) -> None:
        """Remove every entry of each path (any query, host, user or variant) in every
        instance."""
        for path in paths:
            await self._store.invalidate_tag(path_tag(path))

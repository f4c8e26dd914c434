"""Authorization: roles, wildcard permissions, per-resource grants, API-key scopes, route rules.

A permission is ``resource:action``; ``*`` in either half means "every", and a bare ``*`` means
every action on every resource. A permission stands for the set of concrete permissions it
names, and a grant *covers* a requirement when it includes all of them: ``orders:*`` covers
``orders:read``; a rule requiring ``admin:*`` is met only by ``*`` or ``admin:*``, never by
``admin:read`` alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bastion.auth.config import AccessRule
from bastion.http.paths import GlobMatcher, PathGlob, compile_alternatives, glob_regex

__all__ = [
    "AUTHENTICATED",
    "DENY",
    "PUBLIC",
    "UNPROTECTED",
    "AccessRules",
    "Authorizer",
    "RoleBook",
    "RuleDecision",
    "permission_matches",
    "resource_key",
]

_WILDCARD = "*"


def _halves(permission: str) -> tuple[str, str]:
    if permission == _WILDCARD:
        return _WILDCARD, _WILDCARD
    resource, _, action = permission.partition(":")
    return resource, action


def permission_matches(granted: str, required: str) -> bool:
    """Whether ``granted`` covers every concrete permission that ``required`` names.

    Each half is covered by ``*`` or by the same name; a ``*`` in ``required`` is covered only
    by ``*`` in ``granted``. So ``*:read`` covers ``orders:read`` but not ``orders:*``, and
    ``orders:*`` covers ``orders:read`` but not ``*:read``.
    """
    if granted in (_WILDCARD, required):
        return True
    granted_resource, granted_action = _halves(granted)
    required_resource, required_action = _halves(required)
    return granted_resource in (_WILDCARD, required_resource) and granted_action in (
        _WILDCARD,
        required_action,
    )


def resource_key(required: str, resource_id: str) -> str:
    """The resource a per-resource grant is stored under: ``projects:edit`` + ``42`` →
    ``projects:42``.

    Raises ``ValueError`` when ``required`` names no single resource (``*``, ``*:read``) or the
    id is empty, because a grant on "every resource" is a global role, not a resource grant.
    """
    resource, _ = _halves(required)
    if not resource or resource == _WILDCARD or not resource_id:
        raise ValueError(f"no resource grant can cover {required!r} on {resource_id!r}")
    return f"{resource}:{resource_id}"


class RoleBook:
    """Roles and their permissions (``AuthConfig.role_table()``), with a per-request check."""

    __slots__ = ("_allows", "_roles")

    def __init__(self, roles: Mapping[str, Sequence[str]], *, cache_size: int = 4096) -> None:
        self._roles = {name: frozenset(permissions) for name, permissions in roles.items()}
        # Role sets and required permissions come from configuration and the user table, not
        # from request text, so the cache stays warm; the bound is a guard, not a tuning knob.
        self._allows = functools.lru_cache(maxsize=cache_size)(self._compute)

    @property
    def names(self) -> tuple[str, ...]:
        """Every role name, in configuration order."""
        return tuple(self._roles)

    @property
    def cached(self) -> int:
        """How many (roles, permission) answers are currently remembered."""
        return self._allows.cache_info().currsize

    def permissions(self, roles: Iterable[str]) -> frozenset[str]:
        """Union of the permissions of ``roles``; unknown roles contribute nothing."""
        empty: frozenset[str] = frozenset()
        return empty.union(*(self._roles.get(role, empty) for role in roles))

    def allows(self, roles: Iterable[str], required: str) -> bool:
        """Whether any permission of ``roles`` covers ``required``."""
        return self._allows(frozenset(roles), required)

    def _compute(self, roles: frozenset[str], required: str) -> bool:
        return any(permission_matches(granted, required) for granted in self.permissions(roles))


class Authorizer:
    """Decides whether a principal may do ``required``, combining global roles, roles granted
    on one resource and the scopes an API key is limited to."""

    __slots__ = ("book",)

    def __init__(self, book: RoleBook) -> None:
        self.book = book
        """The role table permissions are read from."""

    def allows(
        self,
        *,
        roles: Sequence[str],
        required: str,
        scopes: Sequence[str] = (),
        resource_roles: Sequence[str] = (),
    ) -> bool:
        """Whether ``required`` is allowed.

        ``roles`` are the principal's global roles; ``resource_roles`` are the roles it holds on
        the resource ``resource_key(required, id)`` names (the caller looks them up under that
        key, so they never leak to another resource). Either may grant. Non-empty ``scopes``
        (an API key limited to them) must also cover ``required``: scopes only restrict.
        """
        if scopes and not any(permission_matches(scope, required) for scope in scopes):
            return False
        return self.book.allows(roles, required) or (
            bool(resource_roles) and self.book.allows(resource_roles, required)
        )


@dataclass(frozen=True, slots=True)
class RuleDecision:
    """What the route rules say about a request."""

    kind: Literal["none", "public", "authenticated", "require", "deny"]
    """``none``: no rule and not protected; ``public``; ``authenticated``: any principal;
    ``require``: ``permission`` is needed; ``deny``: under a ``protect`` glob and no rule
    matches (default deny: only a principal holding ``*`` passes, per ``AuthConfig.protect``)."""
    permission: str | None = None
    """The permission a ``require`` decision needs; ``None`` otherwise."""


UNPROTECTED = RuleDecision("none")
"""No rule matches and the path is outside every ``protect`` glob."""
PUBLIC = RuleDecision("public")
"""A ``public = true`` rule matched: no authentication needed."""
AUTHENTICATED = RuleDecision("authenticated")
"""An ``authenticated = true`` rule matched: any principal passes."""
DENY = RuleDecision("deny")
"""No rule matches under a ``protect`` glob: default deny."""

_ANY_METHOD = ""  # table key of the rules that apply to methods no rule names
_CACHED_PATH_MAX = 512  # longer paths are decided uncached, so the cache holds little memory

_Table = tuple[GlobMatcher | None, tuple[RuleDecision, ...]]
"""Per method: one alternation of the applicable rules' globs, and their decisions in order."""


class AccessRules:
    """``[[auth.rules]]`` and ``protect``, compiled once; the first matching rule decides."""

    __slots__ = ("_by_method", "_cached", "_empty", "_protect")

    def __init__(
        self, rules: Sequence[AccessRule], protect: Sequence[str], *, cache_size: int = 4096
    ) -> None:
        requires: dict[str, RuleDecision] = {}
        compiled: list[tuple[frozenset[str], str, RuleDecision]] = []
        for rule in rules:
            if rule.public:
                decision = PUBLIC
            elif rule.authenticated:
                decision = AUTHENTICATED
            else:
                assert rule.require is not None  # AccessRule allows exactly one decision
                decision = requires.setdefault(rule.require, RuleDecision("require", rule.require))
            methods = frozenset(rule.methods)
            if "GET" in methods:
                # A HEAD is a GET without the body: it must not reach what a GET rule guards.
                methods |= {"HEAD"}
            compiled.append((methods, glob_regex(rule.path), decision))

        # One alternation per method, rules in order: the regex engine tries alternatives left
        # to right, so the first group that matches is the first matching rule, in one call.
        named = {method for methods, _, _ in compiled for method in methods} | {_ANY_METHOD}
        self._by_method: dict[str, _Table] = {}
        for method in named:
            applicable = [(p, d) for ms, p, d in compiled if not ms or method in ms]
            self._by_method[method] = _table(applicable)
        self._protect = PathGlob(protect)
        self._empty = not compiled and not self._protect.patterns
        self._cached = functools.lru_cache(maxsize=cache_size)(self._decide)

    def decide(self, method: str, path: str) -> RuleDecision:
        """The decision for ``method`` on ``path`` (the path as given: nothing is decoded).

        Decisions are shared constants. Recent ones are remembered in a bounded cache, since
        clients choose paths freely.
        """
        if len(path) > _CACHED_PATH_MAX:
            return self._decide(method, path)
        return self._cached(method, path)

    @property
    def empty(self) -> bool:
        """No rules and no ``protect``: the auth stage can skip rule evaluation entirely."""
        return self._empty

    @property
    def cached(self) -> int:
        """How many (method, path) decisions are currently remembered."""
        return self._cached.cache_info().currsize

    def _decide(self, method: str, path: str) -> RuleDecision:
        # Methods are case-sensitive in HTTP, but an upstream may treat "get" as GET; folding
        # here keeps a lowercase method from slipping past a rule that names GET.
        pattern, decisions = self._by_method.get(method.upper()) or self._by_method[_ANY_METHOD]
        if pattern is not None:
            found = pattern.match(path)
            if found is not None and found.lastindex is not None:
                index: int = found.lastindex
                return decisions[index - 1]
        return DENY if self._protect.matches(path) else UNPROTECTED


def _table(rules: list[tuple[str, RuleDecision]]) -> _Table:
    # glob_regex only emits non-capturing groups, so group N is exactly rule N.
    if not rules:
        return None, ()
    pattern = compile_alternatives(regex for regex, _ in rules)
    return pattern, tuple(decision for _, decision in rules)

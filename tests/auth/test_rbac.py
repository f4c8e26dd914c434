"""Authorization: wildcard permissions, roles, resource grants, scopes and route rules."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.auth.config import DEFAULT_ROLES, AccessRule, AuthConfig
from bastion.auth.rbac import (
    AUTHENTICATED,
    DENY,
    PUBLIC,
    UNPROTECTED,
    AccessRules,
    Authorizer,
    RoleBook,
    RuleDecision,
    permission_matches,
    resource_key,
)

# -- permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ("*", "orders:read", True),
        ("*", "orders:*", True),
        ("*", "*:read", True),
        ("*", "*", True),
        ("orders:*", "orders:read", True),
        ("orders:*", "orders:*", True),
        ("orders:*", "invoices:read", False),
        ("orders:*", "*:read", False),
        ("orders:*", "*", False),
        ("*:read", "orders:read", True),
        ("*:read", "*:read", True),
        ("*:read", "orders:write", False),
        ("*:read", "orders:*", False),
        ("*:read", "*:write", False),
        ("*:read", "*", False),
        ("orders:read", "orders:read", True),
        ("orders:read", "orders:write", False),
        ("orders:read", "invoices:read", False),
        ("orders:read", "orders:*", False),
        ("orders:read", "*:read", False),
        ("orders:read", "*", False),
        ("admin:read", "admin:*", False),
        ("admin:*", "admin:*", True),
        ("admin:*", "admin:read", True),
        ("orders:read", "orders:readx", False),
        ("orders:read", "order:read", False),
        ("orders", "orders:read", False),
        ("", "orders:read", False),
        ("orders:read", "", False),
    ],
)
def test_wildcard_matrix(granted: str, required: str, expected: bool) -> None:
    assert permission_matches(granted, required) is expected


NAMES = st.sampled_from(["orders", "read", "write", "admin"])
PERMISSIONS = st.one_of(
    st.just("*"),
    st.builds(lambda r, a: f"{r}:{a}", st.one_of(NAMES, st.just("*")), NAMES),
    st.builds(lambda r: f"{r}:*", NAMES),
)


@given(PERMISSIONS)
def test_star_covers_everything_and_each_permission_covers_itself(permission: str) -> None:
    assert permission_matches("*", permission)
    assert permission_matches(permission, permission)


def concrete(permission: str) -> set[tuple[str, str]]:
    # "other" stands for every name the permission does not spell out: a wildcard covers it.
    universe = ["orders", "read", "write", "admin", "other"]
    resource, _, action = ("*:*" if permission == "*" else permission).partition(":")
    return {
        (r, a) for r in universe for a in universe if resource in ("*", r) and action in ("*", a)
    }


@given(PERMISSIONS, PERMISSIONS)
def test_granted_covers_required_iff_it_includes_every_concrete_permission(
    granted: str, required: str
) -> None:
    assert permission_matches(granted, required) is (concrete(required) <= concrete(granted))


# -- roles -----------------------------------------------------------------------------------

DEFAULT_BOOK = RoleBook(AuthConfig().role_table())


@pytest.mark.parametrize(
    ("role", "required", "expected"),
    [
        ("admin", "orders:read", True),
        ("admin", "orders:delete", True),
        ("admin", "admin:*", True),
        ("admin", "*", True),
        ("operator", "orders:read", True),
        ("operator", "orders:write", True),
        ("operator", "*:write", True),
        ("operator", "orders:delete", False),
        ("operator", "admin:*", False),
        ("operator", "*", False),
        ("viewer", "orders:read", True),
        ("viewer", "*:read", True),
        ("viewer", "orders:write", False),
        ("viewer", "orders:*", False),
        ("viewer", "admin:*", False),
    ],
)
def test_default_roles(role: str, required: str, expected: bool) -> None:
    assert DEFAULT_BOOK.allows([role], required) is expected
    assert Authorizer(DEFAULT_BOOK).allows(roles=[role], required=required) is expected


def test_role_book_lists_roles_and_unions_permissions() -> None:
    book = RoleBook({**DEFAULT_ROLES, "auditor": ["audit:read"]})
    assert book.names == ("admin", "operator", "viewer", "auditor")
    assert book.permissions(["viewer", "auditor"]) == {"*:read", "audit:read"}
    assert book.permissions([]) == frozenset()


def test_unknown_roles_grant_nothing() -> None:
    assert DEFAULT_BOOK.permissions(["ghost"]) == frozenset()
    assert not DEFAULT_BOOK.allows(["ghost"], "orders:read")
    assert not DEFAULT_BOOK.allows([], "orders:read")
    assert not Authorizer(DEFAULT_BOOK).allows(roles=["ghost", "Admin"], required="orders:read")
    assert DEFAULT_BOOK.allows(["ghost", "viewer"], "orders:read")


def test_role_answers_do_not_depend_on_order_and_the_cache_is_bounded() -> None:
    book = RoleBook(DEFAULT_ROLES, cache_size=8)
    assert book.allows(["viewer", "operator"], "orders:write")
    assert book.allows(("operator", "viewer"), "orders:write")
    assert book.allows({"viewer", "operator"}, "orders:write")
    for index in range(100):
        assert book.allows(["viewer"], f"r{index}:read")
        assert not book.allows(["viewer"], f"r{index}:write")
    assert book.cached <= 8


# -- resource grants and scopes ------------------------------------------------------------

BOOK = RoleBook({**DEFAULT_ROLES, "project_editor": ["projects:edit", "projects:read"]})
AUTHORIZER = Authorizer(BOOK)
GRANTS = {"projects:42": ("project_editor",)}
"""Resource grants as the store holds them: resource → roles held there."""


def allowed_on(required: str, resource_id: str, *, roles: Sequence[str] = ()) -> bool:
    held = GRANTS.get(resource_key(required, resource_id), ())
    return AUTHORIZER.allows(roles=roles, required=required, resource_roles=held)


def test_resource_grant_applies_to_that_resource_only() -> None:
    assert allowed_on("projects:edit", "42")
    assert allowed_on("projects:read", "42")
    assert not allowed_on("projects:edit", "43")
    assert not allowed_on("projects:delete", "42")
    assert not allowed_on("orders:edit", "42")
    # Without the resource, the same user holds nothing.
    assert not AUTHORIZER.allows(roles=[], required="projects:edit")
    # A global role still applies everywhere.
    assert allowed_on("projects:read", "43", roles=["viewer"])


@pytest.mark.parametrize(
    ("required", "resource_id", "expected"),
    [
        ("projects:edit", "42", "projects:42"),
        ("projects:*", "42", "projects:42"),
        ("orders:read", "a:b", "orders:a:b"),
    ],
)
def test_resource_key(required: str, resource_id: str, expected: str) -> None:
    assert resource_key(required, resource_id) == expected


@pytest.mark.parametrize(
    ("required", "resource_id"),
    [("*", "42"), ("*:read", "42"), ("", "42"), (":read", "42"), ("projects:edit", "")],
)
def test_resource_key_needs_one_resource(required: str, resource_id: str) -> None:
    with pytest.raises(ValueError, match="no resource grant"):
        resource_key(required, resource_id)


@pytest.mark.parametrize(
    ("roles", "scopes", "required", "expected"),
    [
        (["admin"], ["orders:read"], "orders:read", True),
        (["admin"], ["orders:read"], "orders:write", False),
        (["admin"], ["orders:*"], "orders:write", True),
        (["admin"], ["orders:*"], "invoices:read", False),
        (["admin"], ["orders:read", "invoices:read"], "invoices:read", True),
        (["admin"], ["*"], "admin:*", True),
        (["admin"], [], "admin:*", True),
        (["viewer"], ["orders:*"], "orders:write", False),  # scopes never extend
        (["viewer"], ["*"], "orders:write", False),
        (["viewer"], ["*"], "orders:read", True),
        ([], ["*"], "orders:read", False),
    ],
)
def test_scopes_restrict_never_extend(
    roles: list[str], scopes: list[str], required: str, expected: bool
) -> None:
    assert AUTHORIZER.allows(roles=roles, required=required, scopes=scopes) is expected


def test_scopes_restrict_resource_grants_too() -> None:
    held = GRANTS["projects:42"]
    assert AUTHORIZER.allows(
        roles=[], required="projects:read", scopes=["projects:read"], resource_roles=held
    )
    assert not AUTHORIZER.allows(
        roles=[], required="projects:edit", scopes=["projects:read"], resource_roles=held
    )


# -- route rules -----------------------------------------------------------------------------

RULES = AccessRules(
    [
        AccessRule(path="/api/admin/**", require="admin:*"),
        AccessRule(path="/api/public/**", public=True),
        AccessRule(path="/api/public/secret", require="secret:read"),  # shadowed by the above
        AccessRule(path="/api/orders/*", methods=["GET"], require="orders:read"),
        AccessRule(path="/api/orders/*", methods=["POST", "PUT"], require="orders:write"),
        AccessRule(path="/api/me", authenticated=True),
        AccessRule(path="/api/**", methods=["DELETE"], require="*"),
        AccessRule(path="/files/a+b.txt", public=True),
        AccessRule(path="/files/*/raw", require="files:read"),
        AccessRule(path="/docs/**/edit", require="docs:write"),
    ],
    protect=["/api/**"],
)


@pytest.mark.parametrize(
    ("method", "path", "kind", "permission"),
    [
        ("GET", "/api/admin", "require", "admin:*"),
        ("GET", "/api/admin/", "require", "admin:*"),
        ("POST", "/api/admin/users/1", "require", "admin:*"),
        ("TRACE", "/api/admin/x", "require", "admin:*"),
        ("GET", "/api/adminx", "deny", None),
        ("GET", "/api/public/secret", "public", None),
        ("DELETE", "/api/public/x", "public", None),
        ("GET", "/api/orders/7", "require", "orders:read"),
        ("HEAD", "/api/orders/7", "require", "orders:read"),
        ("get", "/api/orders/7", "require", "orders:read"),
        ("POST", "/api/orders/7", "require", "orders:write"),
        ("PUT", "/api/orders/7", "require", "orders:write"),
        ("PATCH", "/api/orders/7", "deny", None),
        ("OPTIONS", "/api/orders/7", "deny", None),
        ("TRACE", "/api/orders/7", "deny", None),
        ("GET", "/api/orders/7/items", "deny", None),
        ("DELETE", "/api/orders/7", "require", "*"),
        ("GET", "/api/me", "authenticated", None),
        ("GET", "/api/me/x", "deny", None),
        ("GET", "/api", "deny", None),
        ("GET", "/api/", "deny", None),
        ("GET", "/apix", "none", None),
        ("GET", "/other", "none", None),
        ("GET", "/", "none", None),
        # Paths are taken literally: nothing is percent-decoded, and glob text is not a regex.
        ("GET", "/api/%61dmin/x", "deny", None),
        ("GET", "/api/orders/a%2Fb", "require", "orders:read"),
        ("GET", "/files/a+b.txt", "public", None),
        ("GET", "/files/aab.txt", "none", None),
        ("GET", "/files/a%2Bb.txt", "none", None),
        ("GET", "/files/x/raw", "require", "files:read"),
        ("GET", "/files//raw", "require", "files:read"),
        ("GET", "/files/x/y/raw", "none", None),
        ("GET", "/docs/a/b/c/edit", "require", "docs:write"),
        ("GET", "/docs/a/b/c/view", "none", None),
        ("GET", "/api/admin/\n", "require", "admin:*"),
        ("GET", "/api/me\n", "deny", None),
    ],
)
def test_access_rules(method: str, path: str, kind: str, permission: str | None) -> None:
    decision = RULES.decide(method, path)
    assert (decision.kind, decision.permission) == (kind, permission)
    assert RULES.decide(method, path) is decision


def test_decisions_are_shared_constants() -> None:
    assert RULES.decide("GET", "/api/public/a") is PUBLIC
    assert RULES.decide("GET", "/api/me") is AUTHENTICATED
    assert RULES.decide("GET", "/api/nothing") is DENY
    assert RULES.decide("GET", "/elsewhere") is UNPROTECTED
    assert RULES.decide("GET", "/api/admin/a") is RULES.decide("PUT", "/api/admin/b")
    assert RULES.decide("GET", "/api/orders/1") == RuleDecision("require", "orders:read")


def test_rules_sharing_a_permission_share_a_decision() -> None:
    rules = AccessRules(
        [AccessRule(path="/a", require="x:read"), AccessRule(path="/b", require="x:read")], []
    )
    assert rules.decide("GET", "/a") is rules.decide("GET", "/b")


def test_head_only_matches_get_rules_that_exist() -> None:
    rules = AccessRules([AccessRule(path="/r", methods=["POST"], require="r:write")], ["/**"])
    assert rules.decide("HEAD", "/r") is DENY
    assert rules.decide("POST", "/r").permission == "r:write"


def test_empty_rules() -> None:
    empty = AccessRules([], [])
    assert empty.empty
    assert empty.decide("GET", "/anything") is UNPROTECTED
    assert not AccessRules([], ["/api/**"]).empty
    assert AccessRules([], ["/api/**"]).decide("GET", "/api/x") is DENY
    assert not RULES.empty


def test_cache_stays_bounded_under_distinct_paths() -> None:
    rules = AccessRules(
        [AccessRule(path="/api/orders/*", methods=["GET"], require="orders:read")], ["/api/**"]
    )
    for index in range(100_000):
        assert rules.decide("GET", f"/api/orders/{index}").permission == "orders:read"
    assert 0 < rules.cached <= 4096


def test_long_paths_are_decided_without_being_cached() -> None:
    rules = AccessRules([AccessRule(path="/api/**", require="api:read")], [])
    path = "/api/" + "a" * 10_000
    assert rules.decide("GET", path).permission == "api:read"
    assert rules.cached == 0

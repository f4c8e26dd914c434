"""Policy matching, bucket keys, exemptions and quota calendars."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bastion.http.principal import Principal
from bastion.http.routes import RouteTable
from bastion.http.state import RequestState
from bastion.proxy.config import RouteConfig
from bastion.ratelimit.config import MatchConfig, PolicyConfig, RateLimitConfig
from bastion.ratelimit.policies import PolicySet, quota_window

IP = "203.0.113.7"


def scope(
    path: str = "/api/items", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers or [], "state": {}}


def state(
    ip: str = IP, principal: Principal | None = None, route: str | None = None
) -> RequestState:
    result = RequestState("req-1", 0.0, ip, "http")
    result.principal = principal
    if route is not None:
        result.route = RouteTable([RouteConfig(name=route, prefix="/", upstream="http://u")]).match(
            "/", None
        )
    return result


def policies(*configured: PolicyConfig, **options: Any) -> PolicySet:
    return PolicySet(RateLimitConfig(policies=list(configured), **options), prefix="/_bastion")


def keys(
    policy_set: PolicySet, request_state: RequestState, stage: str = "gate", **request: Any
) -> list[str]:
    return [
        check.key
        for check in policy_set.checks_for(scope(**request), request_state, stage=stage)  # type: ignore[arg-type]
    ]


ALICE = Principal(subject="u-alice", method="bearer", roles=("staff",), extra={"tenant": "acme"})
KEYED = Principal(subject="u-bob", method="api_key", extra={"key_id": "k-42", "plan": "gold"})


def test_builtin_global_is_early_and_identity_policies_are_late() -> None:
    policy_set = policies(
        PolicyConfig(name="users", key="user", limit=5),
        PolicyConfig(name="per-route", key="route+ip", limit=5),
        PolicyConfig(name="staff-free", key="ip+user", limit=5, exempt_roles=["staff"]),
    )
    assert [p.config.name for p in policy_set.early] == ["global", "per-route"]
    assert [p.config.name for p in policy_set.late] == ["users", "staff-free"]


@pytest.mark.parametrize(
    ("id_", "match", "method", "path", "applies"),
    [
        ("glob-below", MatchConfig(paths=["/api/**"]), "GET", "/api/a/b", True),
        ("glob-root", MatchConfig(paths=["/api/**"]), "GET", "/api", True),
        ("glob-outside", MatchConfig(paths=["/api/**"]), "GET", "/apix", False),
        ("merged-slashes", MatchConfig(paths=["/api/*/orders"]), "GET", "/api//x//orders", True),
        ("method", MatchConfig(methods=["post"]), "POST", "/x", True),
        ("other-method", MatchConfig(methods=["POST"]), "GET", "/x", False),
        ("route", MatchConfig(routes=["billing"]), "GET", "/x", True),
        ("other-route", MatchConfig(routes=["orders"]), "GET", "/x", False),
    ],
)
def test_matching(id_: str, match: MatchConfig, method: str, path: str, applies: bool) -> None:
    policy_set = policies(PolicyConfig(name="global", limit=5, match=match))
    found = keys(policy_set, state(route="billing"), method=method, path=path)
    assert found == (["global|ip:203.0.113.7"] if applies else [])
    # The second look-up is answered from the cache with the same result.
    assert keys(policy_set, state(route="billing"), method=method, path=path) == found


def test_ipv4_and_ipv6_networks_share_buckets() -> None:
    default = policies()
    assert keys(default, state("203.0.113.7")) == ["global|ip:203.0.113.7"]
    site = ["global|ip:2001:db8:0:100::/56"]
    assert keys(default, state("2001:db8:0:1ff:abcd::1")) == site
    assert keys(default, state("2001:db8:0:100::2")) == site
    assert keys(default, state("2001:db8:0:200::1")) != site
    wide = policies(ipv4_prefix=24, ipv6_prefix=64)
    assert keys(wide, state("198.51.100.9")) == keys(wide, state("198.51.100.200"))
    assert keys(wide, state("198.51.100.9")) == ["global|ip:198.51.100.0/24"]
    assert keys(wide, state("2001:db8::1")) == ["global|ip:2001:db8::/64"]
    assert keys(default, state("unknown")) == ["global|ip:unknown"]


@pytest.mark.parametrize(
    ("id_", "key", "principal", "headers", "expected"),
    [
        ("user", "user", ALICE, [], "p|user:u-alice"),
        ("anonymous-user", "user", None, [], None),
        ("api-key", "api_key", KEYED, [], "p|api_key:k-42"),
        ("bearer-has-no-key", "api_key", ALICE, [], None),
        ("tenant", "tenant", ALICE, [], "p|tenant:acme"),
        ("no-tenant", "tenant", KEYED, [], None),
        ("claim", "claim:plan", KEYED, [], "p|claim:plan=gold"),
        ("missing-claim", "claim:plan", ALICE, [], None),
        ("combo", "ip+user", ALICE, [], "p|ip:203.0.113.7|user:u-alice"),
        ("header", "header:X-Client", None, [(b"x-client", b"mobile")], "p|header:X-Client=mobile"),
        ("missing-header", "header:X-Client", None, [], None),
        ("route", "route", None, [], "p|route:billing"),
    ],
)
def test_key_parts(
    id_: str,
    key: str,
    principal: Principal | None,
    headers: list[tuple[bytes, bytes]],
    expected: str | None,
) -> None:
    policy_set = policies(PolicyConfig(name="p", key=key, limit=5))
    request_state = state(principal=principal, route="billing")
    stage = "gate" if policy_set.by_name["p"].config.early else "late"
    found = [
        k for k in keys(policy_set, request_state, stage, headers=headers) if k.startswith("p|")
    ]
    assert found == ([expected] if expected else [])


def test_claims_nested_under_claims() -> None:
    policy_set = policies(PolicyConfig(name="p", key="claim:org", limit=5))
    principal = Principal(subject="s", method="external", extra={"claims": {"org": "o-1"}})
    assert keys(policy_set, state(principal=principal), "late") == ["p|claim:org=o-1"]


@pytest.mark.parametrize(
    ("id_", "value"),
    [("long", b"a" * 65), ("separator", b"a|ip:198.51.100.1"), ("space", b"a b")],
)
def test_unusual_header_values_are_hashed(id_: str, value: bytes) -> None:
    policy_set = policies(PolicyConfig(name="p", key="header:X-Client", limit=5))
    found = keys(policy_set, state(), headers=[(b"x-client", value)])
    key = next(k for k in found if k.startswith("p|"))
    assert key.startswith("p|header:X-Client=#")
    assert len(key) == len("p|header:X-Client=#") + 32
    assert "|ip:" not in key


def test_own_endpoints_are_the_bastion_route() -> None:
    policy_set = policies(PolicyConfig(name="p", key="route", limit=5))
    found = keys(policy_set, state(route="api"), path="/_bastion/auth/login")
    assert "p|route:_bastion" in found
    # Without a gateway route (middleware mode) a route key has nothing to count.
    assert [k for k in keys(policy_set, state(), path="/x") if k.startswith("p|")] == []


def test_exemptions() -> None:
    policy_set = policies(
        PolicyConfig(name="global", limit=5, exempt_cidrs=["10.0.0.0/8", "2001:db8::/32"]),
        PolicyConfig(name="users", key="user", limit=5, exempt_roles=["staff"]),
    )
    assert keys(policy_set, state("10.1.2.3")) == []
    assert keys(policy_set, state("2001:db8::5")) == []
    assert keys(policy_set, state("11.1.2.3")) == ["global|ip:11.1.2.3"]
    assert keys(policy_set, state(principal=ALICE), "late") == []
    assert keys(policy_set, state(principal=KEYED), "late") == ["users|user:u-bob"]


def test_rule_and_check_fields() -> None:
    policy_set = policies(
        PolicyConfig(name="global", limit=100, burst=20, period=60.0),
        PolicyConfig(name="heavy", limit=10, cost=5, mode="shadow", algorithm="sliding_window"),
    )
    checks = policy_set.checks_for(scope(), state(), stage="gate")
    assert [(c.rule.burst, c.cost, c.enforce) for c in checks] == [(20, 1, True), (10, 5, False)]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("id_", "calendar", "now", "window", "left"),
    [
        ("before-paris-midnight", "day", "2026-03-01T22:59:59", 20260301, 1.0),
        ("at-paris-midnight", "day", "2026-03-01T23:00:00", 20260302, 86400.0),
        ("month-turns-in-paris-first", "month", "2026-01-31T23:30:00", 202602, None),
        ("month-before", "month", "2026-01-31T22:30:00", 202601, 1800.0),
    ],
)
def test_quota_windows_follow_the_policy_time_zone(
    id_: str, calendar: str, now: str, window: int, left: float | None
) -> None:
    clock = at(now)
    policy_set = PolicySet(
        RateLimitConfig(
            policies=[
                PolicyConfig(
                    name="q",
                    key="ip",
                    algorithm="quota",
                    limit=1000,
                    calendar=calendar,  # type: ignore[arg-type]
                    timezone="Europe/Paris",
                )
            ]
        ),
        prefix="/_bastion",
        clock=lambda: clock,
    )
    check = next(
        c for c in policy_set.checks_for(scope(), state(), stage="gate") if c.rule.policy == "q"
    )
    assert check.window == window
    assert check.rule.algorithm == "quota"
    if left is not None:
        assert check.rule.period == pytest.approx(left)


def test_quota_day_with_a_dst_change_is_23_hours() -> None:
    from zoneinfo import ZoneInfo

    window, left, length = quota_window(ZoneInfo("Europe/Paris"), "day", at("2026-03-29T10:00:00"))
    assert window == 20260329
    assert length == 23 * 3600
    assert left == 12 * 3600  # 12:00 local time (UTC+2 since 03:00)


LOGIN = MatchConfig(paths=["/api/login"], methods=["POST"])


@pytest.mark.parametrize(
    ("id_", "match", "method", "path", "raw_path", "applies"),
    [
        ("exact", LOGIN, "POST", "/api/login", None, True),
        ("trailing-slash", LOGIN, "POST", "/api/login/", None, True),
        ("upper-case", LOGIN, "POST", "/API/login", None, True),
        ("backslash", LOGIN, "POST", "/api\\login", None, True),
        ("all-at-once", LOGIN, "POST", "/API\\Login//", None, True),
        ("other-path", LOGIN, "POST", "/api/logout", None, False),
        ("other-method", LOGIN, "GET", "/api/login/", None, False),
        # Decoded, ``/api/a%2Fb`` is ``/api/a/b``; an upstream may see one segment ``a%2Fb``.
        ("encoded-slash", MatchConfig(paths=["/api/*"]), "GET", "/api/a/b", b"/api/a%2Fb", True),
        ("plain-slash", MatchConfig(paths=["/api/*"]), "GET", "/api/a/b", b"/api/a/b", False),
        ("head-counts-as-get", MatchConfig(methods=["GET"]), "HEAD", "/x", None, True),
        ("head-not-post", MatchConfig(methods=["POST"]), "HEAD", "/x", None, False),
    ],
)
def test_every_spelling_of_a_path_matches(
    id_: str, match: MatchConfig, method: str, path: str, raw_path: bytes | None, applies: bool
) -> None:
    policy_set = policies(PolicyConfig(name="global", limit=5, match=match))
    request = scope(path=path, method=method)
    if raw_path is not None:
        request["raw_path"] = raw_path
    for _ in range(2):  # computed, then from the caches
        found = [c.key for c in policy_set.checks_for(request, state(), stage="gate")]
        assert found == (["global|ip:203.0.113.7"] if applies else [])


def test_an_encoded_separator_is_not_answered_from_the_plain_path_cache() -> None:
    policy_set = policies(PolicyConfig(name="global", limit=5, match=MatchConfig(paths=["/a/*"])))
    plain = scope(path="/a/b/c")
    plain["raw_path"] = b"/a/b/c"
    encoded = scope(path="/a/b/c")
    encoded["raw_path"] = b"/a/b%2Fc"
    assert not policy_set.checks_for(plain, state(), stage="gate")
    assert len(policy_set.checks_for(encoded, state(), stage="gate")) == 1


def test_cached_checks_follow_the_client_and_its_exemptions() -> None:
    policy_set = policies(
        PolicyConfig(name="global", limit=5, exempt_cidrs=["10.0.0.5/32"]),
        PolicyConfig(name="per-route", key="route+ip", limit=5),
        ipv4_prefix=24,
    )
    for _ in range(2):
        assert keys(policy_set, state("10.0.0.5", route="api")) == [
            "per-route|route:api|ip:10.0.0.0/24"
        ]
        assert keys(policy_set, state("10.0.0.6", route="api")) == [
            "global|ip:10.0.0.0/24",
            "per-route|route:api|ip:10.0.0.0/24",
        ]
        assert keys(policy_set, state("10.0.0.6", route="web")) == [
            "global|ip:10.0.0.0/24",
            "per-route|route:web|ip:10.0.0.0/24",
        ]
    # Static checks are made once per request shape and client, then reused.
    first = policy_set.checks_for(scope(), state("10.0.0.6"), stage="gate")
    assert policy_set.checks_for(scope(), state("10.0.0.6"), stage="gate") is first


def test_checks_that_depend_on_the_request_are_made_per_request() -> None:
    policy_set = policies(
        PolicyConfig(name="p", key="header:X-Client", limit=5),
        PolicyConfig(name="slots", algorithm="concurrency", limit=5),
        PolicyConfig(name="users", key="user", limit=5),
    )
    for value in (b"mobile", b"web"):
        found = keys(policy_set, state(), headers=[(b"x-client", value)])
        assert f"p|header:X-Client={value.decode()}" in found
    leases = [
        check.lease
        for _ in range(2)
        for check in policy_set.checks_for(scope(), state(), stage="gate")
        if check.rule.algorithm == "concurrency"
    ]
    # The same (client-chosen) request id twice: the leases still differ.
    assert len(set(leases)) == 2
    assert all(lease.startswith("req-1.") for lease in leases)
    for principal in (ALICE, KEYED):
        found = keys(policy_set, state(principal=principal), "late")
        assert found == [f"users|user:{principal.subject}"]

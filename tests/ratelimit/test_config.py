"""``[ratelimit]`` configuration: policies no request could pass, and role exemptions on
policies decided before authentication, are refused at load with a message naming the
policy."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.ratelimit.memory import DEFAULT_MAX_KEYS

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "gcra-cost-over-burst",
        {"limit": 100, "burst": 5, "cost": 6},
        "cost 6 is more than its burst",
    ),
    ("gcra-cost-over-limit", {"limit": 5, "cost": 6}, "cost 6 is more than its limit"),
    (
        "window-cost-over-limit",
        {"algorithm": "fixed_window", "limit": 3, "cost": 4},
        "cost 4 is more than its limit",
    ),
    (
        "concurrency-cost-over-limit",
        {"algorithm": "concurrency", "limit": 2, "cost": 3},
        "cost 3 is more than its limit",
    ),
    (
        "quota-cost-over-limit",
        {"algorithm": "quota", "limit": 10, "cost": 11},
        "cost 11 is more than its limit",
    ),
    ("roles-on-ip", {"limit": 5, "exempt_roles": ["staff"]}, "before authentication"),
    (
        "roles-on-route-and-header",
        {"limit": 5, "key": "route+header:X-Client", "exempt_roles": ["staff"]},
        "exempt_roles needs the principal",
    ),
]


@pytest.mark.parametrize(("id_", "options", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_incoherent_policies_are_refused(id_: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        PolicyConfig(name=id_, **options)
    assert f"policy {id_!r}" in str(refused.value)


ACCEPTED: list[tuple[str, dict[str, Any], bool]] = [
    ("gcra-cost-at-burst", {"limit": 100, "burst": 5, "cost": 5}, True),
    ("gcra-cost-over-limit-within-burst", {"limit": 2, "burst": 10, "cost": 10}, True),
    ("window-cost-at-limit", {"algorithm": "sliding_log", "limit": 4, "cost": 4}, True),
    ("roles-on-user", {"limit": 5, "key": "user", "exempt_roles": ["staff"]}, False),
    ("roles-on-ip-and-user", {"limit": 5, "key": "ip+user", "exempt_roles": ["staff"]}, False),
    ("roles-on-claim", {"limit": 5, "key": "claim:org", "exempt_roles": ["staff"]}, False),
    ("cidrs-on-ip", {"limit": 5, "exempt_cidrs": ["10.0.0.0/8"]}, True),
]


@pytest.mark.parametrize(("id_", "options", "early"), ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_coherent_policies_are_accepted(id_: str, options: dict[str, Any], early: bool) -> None:
    assert PolicyConfig(name=id_, **options).early is early


def test_a_refused_policy_fails_the_whole_section() -> None:
    with pytest.raises(ValidationError, match="policy 'exports': cost 20"):
        RateLimitConfig.model_validate(
            {"policies": [{"name": "exports", "limit": 10, "cost": 20, "key": "user"}]}
        )


def test_the_default_bound_of_buckets_is_the_memory_stores() -> None:
    assert RateLimitConfig().max_keys == DEFAULT_MAX_KEYS == 200_000

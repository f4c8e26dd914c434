"""RateLimit headers parse as RFC 8941 structured fields and say what the draft says."""

from __future__ import annotations

import http_sfv
import pytest

from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.ratelimit.core import Check, Decision, Rule
from bastion.ratelimit.headers import HeaderRenderer, RateLimitReport, retry_after_seconds
from bastion.ratelimit.policies import PolicySet


def parse(value: bytes) -> list[tuple[str, dict[str, object]]]:
    parsed = http_sfv.List()
    parsed.parse(value)
    return [(item.value, dict(item.params)) for item in parsed]  # type: ignore[union-attr]


def policy_set(**options: object) -> PolicySet:
    return PolicySet(
        RateLimitConfig(
            policies=[
                PolicyConfig(name="api", limit=100, period=60.0),
                PolicyConfig(name="slow.exports", limit=5, period=3600.0, key="user"),
                PolicyConfig(name="inflight", limit=3, algorithm="concurrency", key="user"),
            ],
            **options,  # type: ignore[arg-type]
        ),
        prefix="/_bastion",
    )


def check(policies: PolicySet, name: str, *, enforce: bool = True) -> Check:
    rule: Rule = policies.by_name[name].rule
    return Check(rule, f"{name}|k", enforce=enforce)


def decision(remaining: int, reset: float, *, allowed: bool = True, limit: int = 100) -> Decision:
    return Decision(allowed, limit, remaining, reset, 0.0 if allowed else reset)


def render(
    policies: PolicySet, entries: list[tuple[Check, Decision]], legacy: bool = False
) -> dict[bytes, bytes]:
    report = RateLimitReport()
    report.add([c for c, _ in entries], [d for _, d in entries])
    return dict(HeaderRenderer(policies, legacy=legacy).render(report))


def test_policy_lists_every_enforced_policy_and_ratelimit_the_most_restrictive() -> None:
    policies = policy_set()
    headers = render(
        policies,
        [
            (check(policies, "global"), decision(1100, 5.2, limit=1200)),
            (check(policies, "api"), decision(42, 16.1)),
            (check(policies, "slow.exports"), decision(42, 1800.0, limit=5)),
            (check(policies, "inflight"), decision(2, 0.0, limit=3)),
        ],
    )
    assert parse(headers[b"ratelimit-policy"]) == [
        ("global", {"q": 1200, "w": 60}),
        ("api", {"q": 100, "w": 60}),
        ("slow.exports", {"q": 5, "w": 3600}),
        ("inflight", {"q": 3, "qu": "concurrent-requests"}),
    ]
    # Lowest remaining first; of equal remaining the longer wait.
    assert parse(headers[b"ratelimit"]) == [("inflight", {"r": 2, "t": 0})]
    headers = render(
        policies,
        [
            (check(policies, "api"), decision(42, 16.1)),
            (check(policies, "slow.exports"), decision(42, 1800.0, limit=5)),
        ],
    )
    assert parse(headers[b"ratelimit"]) == [("slow.exports", {"r": 42, "t": 1800})]
    assert b"x-ratelimit-limit" not in headers


def test_shadow_policies_are_not_reported() -> None:
    policies = policy_set()
    assert render(policies, [(check(policies, "api", enforce=False), decision(0, 3.0))]) == {}
    headers = render(
        policies,
        [
            (check(policies, "api", enforce=False), decision(0, 3.0)),
            (check(policies, "global"), decision(7, 1.0, limit=1200)),
        ],
    )
    assert parse(headers[b"ratelimit"]) == [("global", {"r": 7, "t": 1})]


def test_legacy_headers_describe_the_same_decision() -> None:
    policies = policy_set(legacy_headers=True)
    headers = render(
        policies, [(check(policies, "api"), decision(0, 16.2, allowed=False))], legacy=True
    )
    assert headers[b"x-ratelimit-limit"] == b"100"
    assert headers[b"x-ratelimit-remaining"] == b"0"
    assert headers[b"x-ratelimit-reset"] == b"17"
    assert parse(headers[b"ratelimit"]) == [("api", {"r": 0, "t": 17})]


def test_quota_window_is_the_calendar_period() -> None:
    policies = PolicySet(
        RateLimitConfig(
            policies=[PolicyConfig(name="daily", algorithm="quota", limit=1000, key="user")]
        ),
        prefix="/_bastion",
        clock=lambda: 1_800_000_000.0,
    )
    quota = Check(policies.by_name["daily"].rule, "daily|k", window=20270115)
    headers = render(policies, [(quota, decision(10, 500.0, limit=1000))])
    assert parse(headers[b"ratelimit-policy"]) == [("daily", {"q": 1000, "w": 86400})]


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.9, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header


def test_each_combination_of_policies_has_its_own_policy_header() -> None:
    policies = policy_set()
    renderer = HeaderRenderer(policies, legacy=False)
    combinations = [["global", "api"], ["api"], ["api", "global"], ["global", "api"]]
    for names in combinations:
        report = RateLimitReport()
        report.add([check(policies, name) for name in names], [decision(5, 1.0)] * len(names))
        headers = dict(renderer.render(report))
        assert [name for name, _ in parse(headers[b"ratelimit-policy"])] == names


def test_decisions_of_several_stages_are_rendered_together() -> None:
    policies = policy_set()
    report = RateLimitReport()
    report.add([check(policies, "global")], [decision(9, 1.0, limit=1200)])
    report.add(
        [check(policies, "api", enforce=False), check(policies, "slow.exports")],
        [decision(0, 3.0), decision(4, 900.0, limit=5)],
    )
    assert report.applied("api")
    assert not report.applied("inflight")
    headers = dict(HeaderRenderer(policies, legacy=False).render(report))
    assert [name for name, _ in parse(headers[b"ratelimit-policy"])] == ["global", "slow.exports"]
    assert parse(headers[b"ratelimit"]) == [("slow.exports", {"r": 4, "t": 900})]

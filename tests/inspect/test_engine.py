"""The inspector with small test detectors: scoring, paranoia, modes, per-route overrides,
exclusions, sensitive fields, limits and failing detectors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.config import InspectConfig
from bastion.inspect.core import Location, Match, Normalized, Severity
from bastion.inspect.engine import ERROR_RULE, Inspector, routing_path
from bastion.inspect.request import InspectionRequest


def keyword(word: str, rule: str, category: Any, severity: int, paranoia: int = 1) -> Any:
    def detect(value: Normalized, location: Location, level: int) -> list[Match]:
        if level >= paranoia and word in value.folded:
            return [Match(rule, category, severity, location, paranoia)]
        return []

    detect.__qualname__ = f"detect_{word}"
    return detect


DETECTORS = [
    keyword("evil", "xss-evil", "xss", Severity.CRITICAL),
    keyword("meh", "sqli-meh", "sqli", Severity.WARNING),
    keyword("odd", "sqli-odd", "sqli", Severity.NOTICE),
    keyword("deep", "rce-deep", "rce", Severity.CRITICAL, paranoia=2),
]


def no_protocol(request: InspectionRequest, paranoia: int) -> list[Match]:
    return []


def inspector(protocol: Any = no_protocol, **config: Any) -> Inspector:
    return Inspector(InspectConfig(**config), DETECTORS, protocol)


def get(target: str, *headers: tuple[str, str]) -> InspectionRequest:
    return InspectionRequest("GET", target, headers, b"")


def post_json(path: str, body: bytes) -> InspectionRequest:
    return InspectionRequest("POST", path, (("Content-Type", "application/json"),), body)


@pytest.mark.parametrize(
    ("target", "score", "blocked"),
    [
        ("/?q=hello", 0, False),
        ("/?q=EVIL", 5, True),
        ("/?q=meh", 3, False),
        ("/?q=meh+odd", 5, True),
        ("/?a=meh&b=meh&c=meh", 3, False),  # one rule counts once, wherever it matched
        ("/?q=deep", 0, False),  # paranoia 2 rule
    ],
)
def test_score_and_threshold(target: str, score: int, blocked: bool) -> None:
    verdict = inspector().inspect(get(target))
    assert (verdict.score, verdict.blocked, verdict.flagged) == (score, blocked, blocked)


def test_every_location_of_a_rule_is_reported_once() -> None:
    verdict = inspector().inspect(get("/?a=meh&b=meh&a=meh"))
    assert [m.location.label() for m in verdict.matches] == ["query:a", "query:b"]


def test_paranoia_enables_rules_and_filters_overeager_detectors() -> None:
    assert inspector(paranoia=2).inspect(get("/?q=deep")).score == 5

    def overeager(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        return [Match("xss-pl4", "xss", Severity.CRITICAL, location, paranoia=4)]

    verdict = Inspector(InspectConfig(paranoia=3), [overeager], no_protocol).inspect(get("/"))
    assert verdict.score == 0


def test_threshold_is_configurable() -> None:
    assert inspector(threshold=3).inspect(get("/?q=meh")).blocked
    assert not inspector(threshold=6).inspect(get("/?q=evil")).blocked


def test_monitor_flags_without_blocking() -> None:
    verdict = inspector(mode="monitor").inspect(get("/?q=evil"))
    assert (verdict.flagged, verdict.blocked, verdict.mode, verdict.score) == (
        True,
        False,
        "monitor",
        5,
    )


def test_off_calls_nothing() -> None:
    def boom(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        raise AssertionError("called")

    verdict = Inspector(InspectConfig(mode="off"), [boom], no_protocol).inspect(get("/?q=evil"))
    assert (verdict.blocked, verdict.score, verdict.mode) == (False, 0, "off")


def test_per_route_overrides_by_the_routed_path() -> None:
    routes = [
        {"path": "/public/**", "mode": "off"},
        {"path": "/admin/**", "paranoia": 2, "threshold": 3},
    ]
    engine = inspector(routes=routes)
    assert not engine.inspect(get("/public/x?q=evil")).flagged
    assert engine.inspect(get("/public/..%2fapi?q=evil")).blocked  # routed to /api
    assert engine.inspect(get("/admin/x?q=deep")).blocked
    assert engine.inspect(get("/admin/x?q=meh")).blocked
    assert not engine.inspect(get("/other?q=meh")).blocked


@pytest.mark.parametrize(
    ("raw", "routed"),
    [
        ("/a/b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a%2F..%2F..%2Fb", "/b"),
        ("\\a\\b", "/a/b"),
        ("//a//b/", "/a/b"),
        ("", "/"),
    ],
)
def test_routing_path(raw: str, routed: str) -> None:
    assert routing_path(raw) == routed


def test_exclusion_of_a_category_at_one_location() -> None:
    exclusions = [{"path": "/posts/**", "location": "json:body", "categories": ["xss"]}]
    engine = inspector(exclusions=exclusions)
    assert not engine.inspect(post_json("/posts/1", b'{"body": "evil"}')).matches
    assert engine.inspect(post_json("/posts/1", b'{"title": "evil"}')).blocked
    assert engine.inspect(post_json("/other", b'{"body": "evil"}')).blocked
    # Other categories still apply to the excluded location.
    assert engine.inspect(post_json("/posts/1", b'{"body": "meh odd"}')).blocked


def test_exclusion_needs_every_spelling_of_the_path_to_match() -> None:
    engine = inspector(exclusions=[{"path": "/posts/**", "categories": ["xss"]}])
    assert not engine.inspect(get("/posts/1?q=evil")).flagged
    assert engine.inspect(get("/posts/..%2Fadmin?q=evil")).blocked


def test_exclusion_by_rule_prefix_and_name_wildcard() -> None:
    exclusions = [{"location": "query:search_*", "rules": ["sqli-*"]}]
    engine = inspector(exclusions=exclusions)
    assert engine.inspect(get("/?search_text=meh+odd")).score == 0
    assert engine.inspect(get("/?search_text=evil")).blocked
    assert engine.inspect(get("/?q=meh+odd")).blocked


def test_exclusion_of_a_whole_location_skips_the_detectors() -> None:
    engine = inspector(exclusions=[{"location": "header:user-agent"}])
    assert not engine.inspect(get("/", ("User-Agent", "evil"))).matches
    assert engine.inspect(get("/", ("Referer", "evil"))).blocked


def test_sensitive_and_auth_password_fields_never_reach_detectors() -> None:
    seen: list[str] = []

    def record(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        seen.append(value.raw)
        return []

    engine = Inspector(InspectConfig(sensitive_fields=["ssn"]), [record], no_protocol)
    engine.inspect(post_json("/_bastion/auth/login", b'{"username": "u", "password": "pw1"}'))
    engine.inspect(post_json("/api", b'{"ssn": "123"}'))
    assert "u" in seen
    assert "pw1" not in seen
    assert "123" not in seen


def test_protocol_check_runs_once_and_can_be_excluded() -> None:
    calls: list[int] = []

    def protocol(request: InspectionRequest, paranoia: int) -> list[Match]:
        calls.append(paranoia)
        return [
            Match(
                "protocol-cl", "protocol", Severity.CRITICAL, Location("header", "content-length")
            )
        ]

    assert inspector(protocol, paranoia=3).inspect(get("/?a=1&b=2")).blocked
    assert calls == [3]
    excluded = inspector(protocol, exclusions=[{"location": "header:content-length"}])
    assert not excluded.inspect(get("/")).flagged


def test_a_failing_detector_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    def broken(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        raise ValueError("bug")

    engine = Inspector(InspectConfig(), [broken], no_protocol)
    verdict = engine.inspect(get("/?q=x"))
    assert verdict.blocked
    assert {m.rule for m in verdict.matches} == {ERROR_RULE}
    engine.inspect(get("/?q=y"))
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_lone_surrogates_are_inspected_not_errors() -> None:
    seen: list[str] = []

    def decoding(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        seen.append(value.sql)  # %uD800 would be a lone surrogate, which no encoder accepts
        return []

    verdict = Inspector(InspectConfig(), [decoding], no_protocol).inspect(get("/?q=%uD800"))
    assert verdict.matches == ()
    assert "\ufffd" in seen


def test_over_limit_policies() -> None:
    big = post_json("/", b'{"a": "' + b"x" * 70_000 + b'"}')
    prefix = inspector().inspect(big)
    assert (prefix.blocked, prefix.truncated, prefix.too_large) == (False, True, False)
    reject = inspector(over_limit="reject").inspect(big)
    assert (reject.blocked, reject.too_large) == (True, True)
    long_value = inspector(over_limit="reject").inspect(get("/?q=" + "a" * 9000))
    assert (long_value.blocked, long_value.too_large) == (True, True)
    assert not inspector(over_limit="reject").inspect(get("/?q=a")).blocked


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=1000))
def test_inspect_never_raises(target: str, body: bytes) -> None:
    def every_form(value: Normalized, location: Location, paranoia: int) -> list[Match]:
        _ = (value.sql, value.compact, value.path)
        return []

    engine = Inspector(InspectConfig(), [every_form], no_protocol)
    for content_type in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        request = InspectionRequest("POST", target, (("Content-Type", content_type),), body)
        verdict = engine.inspect(request)
        assert verdict.score in (0, Severity.CRITICAL)


def test_repeated_values_are_inspected_once_and_the_memo_is_bounded() -> None:
    calls: list[str] = []

    def counting(value: Normalized, location: Location, level: int) -> list[Match]:
        calls.append(value.raw)
        if "evil" in value.raw:
            return [Match("sqli-test", "sqli", Severity.CRITICAL, location)]
        return []

    engine = Inspector(InspectConfig(), [counting], no_protocol)
    first = engine.inspect(get("/?q=evil"))
    second = engine.inspect(get("/?q=evil"))
    assert first.blocked
    assert second.blocked
    assert first.matches == second.matches
    assert calls.count("evil") == 1  # the second request was answered from the memo
    long_value = "x" * 600
    engine.inspect(get(f"/?q={long_value}"))
    engine.inspect(get(f"/?q={long_value}"))
    assert calls.count(long_value) == 2  # long values are inspected every time
    for n in range(9000):
        engine.inspect(get(f"/?q=v{n}"))
    assert len(engine._memo) <= 8192


def test_a_failing_detector_is_never_memoised() -> None:
    calls = 0

    def flaky(value: Normalized, location: Location, level: int) -> list[Match]:
        nonlocal calls
        calls += 1
        raise ValueError("bug")

    engine = Inspector(InspectConfig(), [flaky], no_protocol)
    assert engine.inspect(get("/?q=x")).blocked
    assert engine.inspect(get("/?q=x")).blocked
    assert calls >= 2

"""The configuration reference files are generated from the models and must be current."""

from __future__ import annotations

from pathlib import Path

from bastion.config_reference import render_markdown, render_toml
from bastion.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run `python -m bastion.config_reference` and commit the result"


def test_example_toml_is_current() -> None:
    assert (ROOT / "examples" / "bastion.toml").read_text() == render_toml(), REGENERATE


def test_configuration_doc_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == render_markdown(), REGENERATE


def test_example_is_valid_and_equals_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    example = Settings.from_file(ROOT / "examples" / "bastion.toml")
    defaults = Settings.load()
    for name in Settings.model_fields:
        if name == "routes":
            assert [r.name for r in example.routes] == ["api"]
        elif name == "limits":
            assert example.limits.model_copy(update={"body": []}) == defaults.limits
        elif name == "auth":
            assert [rule.path for rule in example.auth.rules] == ["/api/admin/**", "/api/health"]
            assert example.auth.model_copy(update={"rules": []}) == defaults.auth
        elif name == "ratelimit":
            assert [policy.name for policy in example.ratelimit.policies] == ["api"]
            assert example.ratelimit.policies[0].match.paths == ["/api/**"]
            assert example.ratelimit.model_copy(update={"policies": []}) == defaults.ratelimit
        elif name == "inspect":
            assert [item.location for item in example.inspect.exclusions] == [
                "json:body_html",
                "query:q",
            ]
            assert [route.paranoia for route in example.inspect.routes] == [2]
            plain = example.inspect.model_copy(update={"exclusions": [], "routes": []})
            assert plain == defaults.inspect
        elif name == "cache":
            routes = example.cache.http.routes
            assert [route.paths[0] for route in routes] == ["/api/catalog/**", "/api/me"]
            http = example.cache.http.model_copy(update={"routes": []})
            assert example.cache.model_copy(update={"http": http}) == defaults.cache
        elif name == "alerts":
            assert [rule.name for rule in example.alerts.rules] == ["auth-failures-ip"]
            assert example.alerts.model_copy(update={"rules": []}) == defaults.alerts
        else:
            assert getattr(example, name) == getattr(defaults, name), name

"""The configuration reference, generated from the models so it cannot drift.

``python -m bastion.config_reference`` rewrites ``examples/bastion.toml`` (every key, commented,
with its default) and ``docs/configuration.md``; a test fails when either is out of date, and
when a field has no docstring.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from bastion.auth.config import AccessRule
from bastion.cache.http.config import HttpCacheRouteConfig
from bastion.inspect.config import ExclusionConfig, InspectRouteConfig
from bastion.observe.config import AlertRuleConfig
from bastion.pipeline.config import BodyLimitRule
from bastion.proxy.config import RouteConfig
from bastion.ratelimit.config import MatchConfig, PolicyConfig
from bastion.settings import Settings

__all__ = ["render_markdown", "render_toml"]

# Lists of tables are shown with one realistic entry, so the example stays a valid, usable file.
_EXAMPLES: dict[str, list[BaseModel]] = {
    "routes": [RouteConfig(name="api", prefix="/api", upstream="http://127.0.0.1:9000")],
    "limits.body": [
        BodyLimitRule(
            path="/uploads/**", content_types=["multipart/form-data"], max_bytes=100 * 1024 * 1024
        )
    ],
    "auth.rules": [
        AccessRule(path="/api/admin/**", methods=["GET", "POST"], require="admin:*"),
        AccessRule(path="/api/health", public=True),
    ],
    "inspect.exclusions": [
        ExclusionConfig(path="/api/posts/**", location="json:body_html", categories=["xss"]),
        ExclusionConfig(path="/api/search", location="query:q", rules=["sqli-*"]),
    ],
    "inspect.routes": [InspectRouteConfig(path="/api/admin/**", paranoia=2)],
    "cache.http.routes": [
        HttpCacheRouteConfig(paths=["/api/catalog/**"], enabled=True, ttl=300.0),
        HttpCacheRouteConfig(paths=["/api/me", "/api/me/**"], key="user", default_ttl=30.0),
    ],
    "alerts.rules": [
        AlertRuleConfig(
            name="auth-failures-ip", kind="auth_failures", threshold=20, window=60.0, per="ip"
        )
    ],
    "ratelimit.policies": [
        PolicyConfig(
            name="api",
            match=MatchConfig(paths=["/api/**"], methods=["GET"]),
            key="ip",
            limit=100,
            period=60.0,
            burst=20,
        )
    ],
}

_HEADER = """\
# Bastion configuration: every key, with its default.
#
# Generated from the configuration models by `python -m bastion.config_reference`; do not edit
# by hand. Any key can also be set in the environment as BASTION_<SECTION>__<KEY>
# (e.g. BASTION_STORE__REDIS_URL). Secrets accept "env:NAME" or "file:/path". Durations are
# strings such as "500ms", "30s", "15m", "1h", "7d"; sizes "16KiB", "10MiB" or bytes.
"""


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _list_item_class(annotation: Any) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is list and args:
        return _model_class(args[0])
    return None


def _plain(text: str) -> str:
    """Docstring text as one line, with reST literals shown as Markdown ones."""
    return " ".join(text.split()).replace("``", "`")


def _doc(model: type[BaseModel]) -> str:
    return _plain(model.__doc__ or "")


def _describe(model: type[BaseModel], name: str, path: str) -> str:
    description = model.model_fields[name].description
    if not description:
        raise ValueError(f"configuration key {path} has no docstring")
    return _plain(description)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot render {value!r} as TOML")


def _wrap(text: str, prefix: str, width: int = 98) -> Iterator[str]:
    line = prefix
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip() != prefix.strip():
            yield line.rstrip()
            line = prefix
        line += word + " "
    if line.strip() != prefix.strip():
        yield line.rstrip()


def _toml_table(model: BaseModel, path: str, header: str) -> Iterator[str]:
    cls = type(model)
    data = model.model_dump(mode="json")
    yield ""
    yield from _wrap(_doc(cls), "# ")
    yield header
    subtables: list[str] = []
    table_lists: list[str] = []
    for name, field in cls.model_fields.items():
        key = f"{path}.{name}"
        if _model_class(field.annotation) is not None:
            subtables.append(name)
            continue
        yield from _wrap(_describe(cls, name, key), "# ")
        if _list_item_class(field.annotation) is not None:
            table_lists.append(name)
            yield f"# (see [[{key}]] below)"
            continue
        value = data[name]
        if value is None:
            yield f"# {name} = (unset)"
        else:
            yield f"{name} = {_toml_value(value)}"
    for name in subtables:
        yield from _toml_table(getattr(model, name), f"{path}.{name}", f"[{path}.{name}]")
    for name in table_lists:
        for example in _EXAMPLES[f"{path}.{name}"]:
            yield from _toml_table(example, f"{path}.{name}", f"[[{path}.{name}]]")


def render_toml() -> str:
    """``examples/bastion.toml``: every key with its default and description."""
    lines = [_HEADER.rstrip()]
    for name, field in Settings.model_fields.items():
        item = _list_item_class(field.annotation)
        if item is not None:
            for example in _EXAMPLES[name]:
                lines.extend(_toml_table(example, name, f"[[{name}]]"))
            continue
        default = field.get_default(call_default_factory=True)
        lines.extend(_toml_table(default, name, f"[{name}]"))
    return "\n".join(lines) + "\n"


def _md_rows(cls: type[BaseModel], model: BaseModel | None, path: str) -> Iterator[str]:
    data = model.model_dump(mode="json") if model is not None else {}
    for name, field in cls.model_fields.items():
        key = f"{path}.{name}"
        sub = _model_class(field.annotation)
        if sub is not None:
            continue
        if _list_item_class(field.annotation) is not None:
            default = f"see `[[{key}]]`"
        elif model is None or data.get(name) is None:
            default = "required" if field.is_required() else "unset"
        else:
            default = "`" + _toml_value(data[name]).replace("|", "\\|") + "`"
        description = _describe(cls, name, key).replace("|", "\\|")
        yield f"| `{name}` | {default} | {description} |"


def _md_section(
    cls: type[BaseModel], model: BaseModel | None, path: str, title: str
) -> Iterator[str]:
    yield ""
    yield f"## `{title}`"
    yield ""
    yield _doc(cls)
    yield ""
    yield "| key | default | description |"
    yield "|---|---|---|"
    yield from _md_rows(cls, model, path)
    for name, field in cls.model_fields.items():
        key = f"{path}.{name}"
        sub = _model_class(field.annotation)
        if sub is not None:
            value = getattr(model, name) if model is not None else None
            yield from _md_section(sub, value, key, f"[{key}]")
        item = _list_item_class(field.annotation)
        if item is not None:
            yield from _md_section(item, None, key, f"[[{key}]]")


def render_markdown() -> str:
    """``docs/configuration.md``: one table per section."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the configuration models (`python -m bastion.config_reference`).",
        "Sources, strongest first: keyword arguments in Python, `BASTION_<SECTION>__<KEY>`",
        "environment variables, the TOML file (`--config FILE`, else `$BASTION_CONFIG`, else",
        "`./bastion.toml` when present), built-in defaults. Unknown keys and invalid values are",
        "rejected at start-up naming the key (`bastion config check FILE` exits 2). Secrets may be",
        '`"env:NAME"` or `"file:/path"`. Durations: `"500ms"`, `"30s"`, `"15m"`, `"1h"`, `"7d"`.',
        'Sizes: bytes or `"16KiB"`, `"10MiB"`. Path patterns are globs: `*` within a segment,',
        "`**` across segments. A complete commented file is `examples/bastion.toml`.",
    ]
    for name, field in Settings.model_fields.items():
        item = _list_item_class(field.annotation)
        if item is not None:
            lines.extend(_md_section(item, None, name, f"[[{name}]]"))
            continue
        cls = _model_class(field.annotation)
        assert cls is not None
        lines.extend(
            _md_section(cls, field.get_default(call_default_factory=True), name, f"[{name}]")
        )
    return "\n".join(lines) + "\n"


def main(root: Path) -> None:
    (root / "examples").mkdir(exist_ok=True)
    (root / "examples" / "bastion.toml").write_text(render_toml(), encoding="utf-8")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "configuration.md").write_text(render_markdown(), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())

"""Configuration: TOML + environment, unknown keys and bad values named, secrets, durations."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.config_types import parse_byte_size, parse_duration
from bastion.settings import ConfigError, Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)


def test_zero_config_defaults() -> None:
    s = Settings.load()
    assert s.store.database_url == "sqlite+aiosqlite:///./bastion.db"
    assert s.limits.max_header_bytes == 16 * 1024
    assert s.limits.max_url_bytes == 8 * 1024
    assert s.limits.max_body_bytes == 10 * 1024 * 1024
    assert s.shedding.max_inflight == 1000
    assert s.compression.min_size == 1024
    assert s.client_ip.trusted_proxies == []
    assert not s.cors.enabled
    assert not s.csrf.enabled
    assert [str(n) for n in s.metrics.allow] == ["127.0.0.0/8", "::1/128"]


def test_file_env_and_kwargs_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, "[server]\nport = 9000\nhost = '0.0.0.0'\n[shedding]\nmax_inflight = 5\n"
    )
    monkeypatch.setenv("BASTION_SERVER__PORT", "9100")
    s = Settings.from_file(path)
    assert (s.server.host, s.server.port, s.shedding.max_inflight) == ("0.0.0.0", 9100, 5)
    monkeypatch.setenv("BASTION_CONFIG", str(path))
    assert Settings().server.host == "0.0.0.0"


def test_local_bastion_toml_is_read(tmp_path: Path) -> None:
    write(tmp_path, "[server]\nport = 7777\n")
    assert Settings.load().server.port == 7777


def test_env_lists_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CORS__ORIGINS", '["https://app.example.com"]')
    assert Settings.load().cors.origins == ["https://app.example.com"]


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ("[sever]\nport = 1\n", "sever", "unknown key"),
        ("[limits]\nmax_body_bytes = '10 parsecs'\n", "limits.max_body_bytes", "invalid size"),
        (
            "[shedding]\nqueue_timeout = '5 fortnights'\n",
            "shedding.queue_timeout",
            "invalid duration",
        ),
        ("[shedding]\nmax_inflight = 0\n", "shedding.max_inflight", "greater than or equal"),
        (
            "[client_ip]\ntrusted_proxies = ['10.0.0.0/33']\n",
            "client_ip.trusted_proxies.0",
            "invalid IP network",
        ),
        ("[[routes]]\nprefix = 'api'\nupstream = 'http://x'\n", "routes.0.prefix", "starts with"),
        ("[[routes]]\nupstream = 'ftp://x'\n", "routes.0.upstream", "http://"),
        ("[store]\ndatabase_url = 'mysql://x'\n", "store.database_url", "sqlite+aiosqlite"),
        ("[cors]\norigins = ['*']\nallow_credentials = true\n", "cors", "allow_credentials"),
        ("[csrf]\nsecrets = ['env:BASTION_TEST_UNSET_SECRET']\n", "csrf.secrets.0", "not set"),
        ("[server]\nport = 'eighty'\n", "server.port", "integer"),
    ],
)
def test_invalid_values_named(tmp_path: Path, toml: str, key: str, fragment: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        Settings.from_file(path)
    keys = [k for k, _ in info.value.errors]
    assert key in keys, info.value.errors
    assert fragment in str(info.value)


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax error"):
        Settings.from_file(write(tmp_path, "[server\nport=1"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_file(tmp_path / "nope.toml")


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSRF_KEY", "from-env-0123456789")
    secret_file = tmp_path / "key"
    secret_file.write_text("from-file-0123456789\n")
    path = write(
        tmp_path,
        f"[csrf]\nsecrets = ['env:CSRF_KEY', 'file:{secret_file}', 'literal-0123456789']\n",
    )
    s = Settings.from_file(path)
    assert [x.get_secret_value() for x in s.csrf.secrets] == [
        "from-env-0123456789",
        "from-file-0123456789",
        "literal-0123456789",
    ]
    shown = s.redacted()
    assert shown["csrf"]["secrets"] == ["**********"] * 3
    assert "from-env" not in str(shown)


def test_duplicate_route_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[routes]]\nname='a'\nprefix='/x'\nupstream='http://h'\n"
        "[[routes]]\nname='a'\nprefix='/y'\nupstream='http://h'\n",
    )
    with pytest.raises(ConfigError, match="two routes are named"):
        Settings.from_file(path)


def test_with_upstream_and_updates() -> None:
    s = Settings.load().with_upstream("http://127.0.0.1:9000/")
    assert [(r.name, r.prefix, r.upstream) for r in s.routes] == [
        ("default", "/", "http://127.0.0.1:9000")
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("7d", 604800),
        (2, 2.0),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "5", "5 sec", "-1s", "1w", True, None, "s", float("nan"), float("inf"), -0.5, "99999d"],
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("16KiB", 16384), ("10MiB", 10485760), ("1GB", 10**9), (42, 42), ("7", 7), ("2K", 2048)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5MiB", "MiB", "-5", "ten", False, 1.5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_byte_size(text)


@given(st.integers(min_value=0, max_value=36_500), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_serialisation_round_trips(value: int, unit: str) -> None:
    from pydantic import TypeAdapter

    from bastion.config_types import Duration

    adapter = TypeAdapter(Duration)
    seconds = adapter.validate_python(f"{value}{unit}")
    assert adapter.validate_python(adapter.dump_python(seconds)) == pytest.approx(seconds)


def test_a_toml_nan_duration_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text("[server]\nheader_timeout = nan\n")
    with pytest.raises(ConfigError) as exc:
        Settings.from_file(path)
    assert [key for key, _ in exc.value.errors] == ["server.header_timeout"]

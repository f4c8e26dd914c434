"""Root configuration: composes each capability's model.

Sources, strongest first: keyword arguments, ``BASTION_<SECTION>__<KEY>`` environment variables,
the TOML file (``Settings.from_file(path)``, else ``$BASTION_CONFIG``, else ``./bastion.toml`` when
present), built-in defaults. Unknown keys anywhere are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bastion.audit.config import AuditConfig
from bastion.auth.config import AuthConfig
from bastion.cache.config import CacheConfig
from bastion.config_types import ConfigModel, Duration, unique_names
from bastion.inspect.config import InspectConfig
from bastion.observe.config import AlertsConfig, LoggingConfig, MetricsConfig, TracingConfig
from bastion.pipeline.config import (
    ClientIpConfig,
    CompressionConfig,
    CorsConfig,
    CsrfConfig,
    HeadersConfig,
    LimitsConfig,
    RequestIdConfig,
    SheddingConfig,
)
from bastion.proxy.config import ProxyConfig, RouteConfig
from bastion.ratelimit.config import RateLimitConfig
from bastion.store.config import StoreConfig

__all__ = ["ConfigError", "ServerConfig", "Settings", "default_config_path"]

_config_path: ContextVar[Path | None] = ContextVar("bastion_config_path", default=None)


class ConfigError(Exception):
    """The configuration cannot be loaded; ``errors`` lists ``(key, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        lines = [f"{key}: {message}" for key, message in errors]
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n  " + "\n  ".join(lines))

    @classmethod
    def from_validation(cls, exc: ValidationError, source: str | None = None) -> ConfigError:
        errors = []
        for item in exc.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(root)"
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            errors.append((key, message))
        return cls(errors, source)


class ServerConfig(ConfigModel):
    """``[server]``: the HTTP server of ``bastion serve``."""

    host: str = "127.0.0.1"
    """Listen address."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Listen port."""
    workers: int = Field(default=1, ge=1)
    """Processes sharing the listening socket."""
    prefix: str = "/_bastion"
    """Reserved path prefix of Bastion's own endpoints."""
    backlog: int = 2048
    """Pending connections the listening socket queues."""
    keepalive_timeout: float = 5.0
    """Seconds an idle client connection is kept open."""
    header_timeout: Duration = 10.0
    """Longest time a client may take to send a request head (from connecting, or from the
    first byte of a later request) → 408 ``request_timeout``; an idle new connection is closed."""

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/") or value == "/" or value.endswith("/"):
            raise ValueError("prefix must start with '/' and name a path segment, e.g. /_bastion")
        return value


def default_config_path() -> Path | None:
    """The file read when none is given: ``$BASTION_CONFIG``, else ``./bastion.toml`` if present."""
    explicit = _config_path.get()
    if explicit is not None:
        return explicit
    env = os.environ.get("BASTION_CONFIG")
    if env:
        return Path(env)
    local = Path("bastion.toml")
    return local if local.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML configuration file, raising :class:`ConfigError` with the location."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{path} does not exist")], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"TOML syntax error: {exc}")], str(path)) from None
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")], str(path)) from None


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = default_config_path()
        self._data = read_toml(path) if path is not None else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Everything Bastion reads at start; each section is one capability's model."""

    model_config = SettingsConfigDict(
        env_prefix="BASTION_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    """Gateway routes to upstreams; ``--upstream URL`` is one catch-all route."""
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    request_id: RequestIdConfig = Field(default_factory=RequestIdConfig)
    client_ip: ClientIpConfig = Field(default_factory=ClientIpConfig)
    shedding: SheddingConfig = Field(default_factory=SheddingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    csrf: CsrfConfig = Field(default_factory=CsrfConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    inspect: InspectConfig = Field(default_factory=InspectConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    headers: HeadersConfig = Field(default_factory=HeadersConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @field_validator("routes")
    @classmethod
    def _unique_routes(cls, routes: list[RouteConfig]) -> list[RouteConfig]:
        return unique_names(routes, "routes")

    @model_validator(mode="after")
    def _alert_routes(self) -> Settings:
        unknown = self.alerts.unknown_routes({route.name for route in self.routes})
        if unknown:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "value_error", "unknown route names: {names}", {"names": names}
                        ),
                        loc=("alerts", "rules", index, "routes"),
                        input=self.alerts.rules[index].routes,
                    )
                    for index, names in unknown
                ],
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from ``path`` (or the default file), the environment and ``overrides``,
        raising :class:`ConfigError` that names each offending key."""
        token = _config_path.set(Path(path) if path is not None else None)
        try:
            source = default_config_path()
            try:
                return cls(**overrides)
            except ValidationError as exc:
                raise ConfigError.from_validation(exc, str(source) if source else None) from None
        finally:
            _config_path.reset(token)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Settings:
        """Read ``path`` (plus environment overrides and ``overrides``)."""
        return cls.load(path, **overrides)

    def with_upstream(self, upstream: str) -> Settings:
        """A copy whose routes are one catch-all route to ``upstream`` (``--upstream URL``)."""
        route = RouteConfig(name="default", prefix="/", upstream=upstream)
        # Validated as a whole: rules elsewhere may name routes (alert rules do).
        return self.with_updates(routes=[route.model_dump()])

    def with_updates(self, **sections: Any) -> Settings:
        """A validated copy with whole sections replaced (``server=ServerConfig(...)``);
        :class:`ConfigError` naming each offending key when the result is invalid."""
        data = self.model_dump()
        for key, value in sections.items():
            data[key] = value.model_dump() if isinstance(value, ConfigModel) else value
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc) from None

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets replaced by ``"**********"``."""
        return self.model_dump(mode="json")

"""Configuration of the stores shared by every capability."""

from __future__ import annotations

from pydantic import field_validator

from bastion.config_types import ConfigModel, Duration, SecretValue

__all__ = ["StoreConfig"]

_SQL_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


class StoreConfig(ConfigModel):
    """``[store]``: the durable database and the optional Redis."""

    database_url: str = "sqlite+aiosqlite:///./bastion.db"
    """SQLAlchemy URL: ``sqlite+aiosqlite:///path`` (default) or ``postgresql+asyncpg://…``."""
    redis_url: str = ""
    """``redis://host:port/db`` to share counters, revocation, cache and pub/sub; empty: none."""
    auto_migrate: bool = True
    """Apply pending migrations at start (PostgreSQL: under an advisory lock)."""
    key_encryption_key: SecretValue | None = None
    """Wraps the keys kept in ``bastion_keys`` (base64 of 32 bytes); unset logs a warning. Once
    set, keys stored in the clear are refused: run ``bastion keys wrap`` once to adopt the keys
    created before it."""
    timeout: Duration = 2.0
    """Connect and command timeout of store calls."""
    pool_size: int = 10
    """Database connections per process (PostgreSQL)."""
    slow_query: Duration = 0.1
    """Log Bastion's own SQL statements that take at least this long (``bastion.store`` warning,
    statement text without parameters); ``0`` disables the log."""

    @field_validator("database_url")
    @classmethod
    def _sql_url(cls, value: str) -> str:
        if not value.startswith(_SQL_SCHEMES):
            raise ValueError(
                "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

"""Structured logs: structlog rendering JSON lines with orjson (or a console format).

The request id is bound in a context variable for the duration of each request, so every line
logged while serving it — Bastion's own and the wrapped app's structlog calls — carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from bastion.observe.config import LoggingConfig

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _render_json(_: WrappedLogger, __: str, event: EventDict) -> bytes:
    return orjson.dumps(event, default=str)


def configure_logging(config: LoggingConfig, log_format: str | None = None) -> None:
    """Configure structlog (and the standard library's root logger) for this process."""
    fmt = log_format or config.format
    level = _LEVELS[config.level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors = [*shared, structlog.processors.format_exc_info, _render_json]
        factory: Any = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; send their warnings to the same stream.
    logging.basicConfig(
        level=max(level, logging.WARNING),
        stream=sys.stderr,
        force=True,
        format="%(levelname)s %(name)s: %(message)s",
    )


def get_logger(name: str) -> Any:
    """A structlog logger tagged with ``logger_name=name``, configured lazily on first use."""
    return structlog.get_logger(logger_name=name)

"""``bastion serve``: run the gateway."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer
import uvicorn
from uvicorn.supervisors import Multiprocess

from bastion.cli.common import EXIT_CONFIG, ConfigOption, fail, load_settings
from bastion.engine import Bastion
from bastion.http.server import ServerConfig
from bastion.observe.logging import configure_logging, get_logger
from bastion.settings import ConfigError, Settings

__all__ = ["gateway_from_env", "run_gateway", "serve"]

_ARGS_ENV = "BASTION_SERVE_ARGS"

LogFormat = Literal["json", "console"]


def _effective_settings(
    config: Path | None,
    upstream: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
) -> Settings:
    settings = load_settings(config)
    if upstream:
        try:
            settings = settings.with_upstream(upstream)
        except ConfigError as exc:
            fail(f"with --upstream {upstream}: {exc}", EXIT_CONFIG)
        except ValueError as exc:
            fail(f"--upstream: {exc}", EXIT_CONFIG)
    server = settings.server.model_copy(
        update={
            k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None
        }
    )
    try:
        settings = settings.with_updates(server=server)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if not settings.routes:
        fail("no upstream: pass --upstream URL or configure [[routes]]", EXIT_CONFIG)
    return settings


class _RefusedHandshakeFilter(logging.Filter):
    """Drops uvicorn's error line for WebSocket handshakes the pipeline refused on purpose
    (with a problem response or a close code): a client could fill the error log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def _quiet_refused_handshakes() -> None:
    logging.getLogger("uvicorn.error").addFilter(_RefusedHandshakeFilter())


def gateway_from_env() -> Any:
    """Factory run in each worker process: rebuilds the settings the parent validated."""
    args = orjson.loads(os.environ[_ARGS_ENV])
    config = Path(args["config"]) if args["config"] else None
    settings = _effective_settings(config, args["upstream"], None, None, None)
    configure_logging(settings.logging, args["log_format"])
    _quiet_refused_handshakes()
    return Bastion(settings).gateway()


def server_options(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> dict[str, Any]:
    """The HTTP server's options for the gateway of ``settings`` (``host``/``port`` override
    ``[server]``'s): uvloop, lifespan, no proxy-header handling of its own (only the client-IP
    stage decides whom to believe), no access log or Server header of its own, and the
    configured keep-alive, header timeout, backlog and request-head limits."""
    server = settings.server
    return {
        "host": server.host if host is None else host,
        "port": server.port if port is None else port,
        "loop": "uvloop",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": int(server.keepalive_timeout),
        "header_timeout": server.header_timeout,
        "backlog": server.backlog,
        "max_header_bytes": settings.limits.max_header_bytes,
        "max_url_bytes": settings.limits.max_url_bytes,
    }


def run_gateway(
    settings: Settings, *, log_format: str | None, config: Path | None, upstream: str | None
) -> None:
    """Serve the gateway with uvicorn (one process, or ``server.workers`` processes)."""
    configure_logging(settings.logging, log_format)
    log: Any = get_logger("bastion.serve")
    server = settings.server
    common = server_options(settings)
    routes = ", ".join(f"{r.prefix} -> {r.upstream}" for r in settings.routes)
    log.info(
        "gateway starting",
        listen=f"{server.host}:{server.port}",
        workers=server.workers,
        routes=routes,
    )
    if server.workers == 1:
        config_obj = ServerConfig(Bastion(settings).gateway(), **common)
        _quiet_refused_handshakes()  # after uvicorn configured its loggers
        uvicorn.Server(config_obj).run()
        return
    metrics_dir = tempfile.mkdtemp(prefix="bastion-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[_ARGS_ENV] = orjson.dumps(
        {"config": str(config) if config else None, "upstream": upstream, "log_format": log_format}
    ).decode()
    try:
        config_obj = ServerConfig(
            "bastion.cli.serve_cmd:gateway_from_env",
            factory=True,
            workers=server.workers,
            **common,
        )
        sock = config_obj.bind_socket()
        Multiprocess(config_obj, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def serve(
    upstream: Annotated[
        str | None, typer.Option(help="Upstream URL: shorthand for one catch-all route.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (server.port).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (server.workers).")
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option("--log-format", help="json or console (logging.format).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the gateway in front of the configured upstream(s)."""
    settings = _effective_settings(config, upstream, host, port, workers)
    run_gateway(settings, log_format=log_format, config=config, upstream=upstream)

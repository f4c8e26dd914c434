"""``bastion demo``: the demo upstream and the gateway in one process, ready to try, with two
demo users and route rules that make the protection visible."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from bastion.auth.admin import IdentityAdmin
from bastion.auth.config import AccessRule
from bastion.cli.identity import open_identity
from bastion.cli.serve_cmd import server_options
from bastion.demo.server import server_config
from bastion.engine import Bastion
from bastion.http.problems import BastionError
from bastion.http.server import ServerConfig
from bastion.observe.logging import configure_logging
from bastion.settings import Settings
from bastion.store.config import StoreConfig

__all__ = ["DEMO_RULES", "DEMO_USERS", "DemoUser", "demo_settings", "ensure_demo_users", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoUser:
    """An account ``bastion demo`` creates, with a password printed for anyone to try."""

    username: str
    password: str
    role: str
    may: str
    """What the role may do under :data:`DEMO_RULES`, for the banner."""


DEMO_USERS = (
    DemoUser("admin@demo.local", "demo-admin-pass-1", "admin", "everything"),
    DemoUser("viewer@demo.local", "demo-viewer-pass-1", "viewer", "reads; writes answer 403"),
)
"""The demo accounts. Their passwords are public: never point the demo at a real database."""

_WRITES = ["POST", "PUT", "PATCH", "DELETE"]

DEMO_RULES = (
    # Echoes every request header, credentials included: operators only.
    AccessRule(path="/headers", require="admin:*"),
    AccessRule(path="/items/**", methods=_WRITES, require="*:write"),
    AccessRule(path="/orders/**", methods=_WRITES, require="*:write"),
)
"""Rules the demo adds when the configuration has none: reads stay public, writes to the
catalogue need ``*:write`` (admin, operator), ``/headers`` needs ``admin:*``."""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def demo_settings(settings: Settings, data: Path) -> Settings:
    """The demo's settings: a database in ``data`` unless ``[store]`` is configured, and
    :data:`DEMO_RULES` unless the configuration has rules of its own."""
    if "store" not in settings.model_fields_set:
        database = f"sqlite+aiosqlite:///{data / 'bastion.db'}"
        settings = settings.with_updates(store=StoreConfig(database_url=database))
    auth = settings.auth
    if auth.enabled and not auth.rules and not auth.protect:
        settings = settings.with_updates(auth=auth.model_copy(update={"rules": list(DEMO_RULES)}))
    return settings


async def ensure_demo_users(settings: Settings) -> list[DemoUser]:
    """Create the :data:`DEMO_USERS` that do not exist yet (applying migrations first when
    ``store.auto_migrate``); returns those that already existed, left as they were."""
    existing = []
    async with open_identity(settings) as service:
        admin = IdentityAdmin(service, actor="demo")
        for user in DEMO_USERS:
            try:
                await admin.create_user(user.username, user.password, roles=[user.role])
            except BastionError as exc:
                # "Exists" whether from an earlier run or from another demo a moment ago.
                if exc.code != "conflict":
                    raise
                existing.append(user)
    return existing


def _banner(gateway: str, upstream: str, prefix: str, users: list[str], rules: bool) -> str:
    head = f"""
Bastion demo
  gateway   {gateway}   (try it)
  upstream  {upstream}   (the demo API behind it)
  health    {gateway}{prefix}/health
  metrics   {gateway}{prefix}/metrics
"""
    if not users:
        return (
            head
            + f"""
Three things to try:
  curl -i {gateway}/items
  curl -i -X POST {gateway}/items -H 'content-type: application/json' \\
       -d '{{"name": "lamp", "price": 12.5, "tags": ["home"]}}'
  curl -i {gateway}/items -H 'X-Forwarded-For: 203.0.113.9'   # not trusted: ignored

Press Ctrl+C to stop.
"""
        )
    admin = DEMO_USERS[0]
    hint = (
        f"Without the token the write answers 401; as the viewer, 403. Who you are: "
        f"{prefix}/auth/me\n"
        if rules
        else ""
    )
    login = f'{{"username": "{admin.username}", "password": "{admin.password}"}}'
    return (
        head
        + "\nDemo users (password, role):\n"
        + "".join(f"  {line}\n" for line in users)
        + f"""
Three things to try (a public read, a login, a write with the token):
  curl -i {gateway}/items
  TOKEN=$(curl -s -X POST {gateway}{prefix}/auth/login -H 'content-type: application/json' \\
       -d '{login}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
  curl -i -X POST {gateway}/items -H "Authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' -d '{{"name": "lamp", "price": 12.5, "tags": []}}'
{hint}
Press Ctrl+C to stop.
"""
    )


def _user_lines(existing: list[DemoUser], rules: bool) -> list[str]:
    width = max(len(user.username) for user in DEMO_USERS)
    lines = []
    for user in DEMO_USERS:
        role = f"({user.role}: {user.may})" if rules else f"({user.role})"
        kept = "   existing account, kept as it was" if user in existing else ""
        lines.append(f"{user.username:<{width}}  {user.password}  {role}{kept}")
    return lines


def run_demo(settings: Settings, *, host: str, port: int) -> None:
    """Serve the demo upstream on a free loopback port and the gateway on ``host:port``."""
    asyncio.run(_serve(settings, host, port))


async def _serve(settings: Settings, host: str, port: int) -> None:
    configure_logging(settings.logging, "console")
    upstream_port = _free_port("127.0.0.1")
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    with tempfile.TemporaryDirectory(prefix="bastion-demo-") as data:
        settings = demo_settings(settings, Path(data)).with_upstream(upstream_url)
        # The hints describe the demo's rules; an operator's own rules may differ.
        rules = settings.auth.rules == list(DEMO_RULES)
        existing = await ensure_demo_users(settings) if settings.auth.enabled else None
        users = _user_lines(existing, rules) if existing is not None else []
        upstream = uvicorn.Server(server_config("127.0.0.1", upstream_port))
        gateway = uvicorn.Server(
            ServerConfig(
                Bastion(settings).gateway(), **server_options(settings, host=host, port=port)
            )
        )
        upstream_task = asyncio.create_task(upstream.serve())
        while not upstream.started:
            if upstream_task.done():
                await upstream_task
                return
            await asyncio.sleep(0.05)
        prefix = settings.server.prefix
        banner = _banner(f"http://{host}:{port}", upstream_url, prefix, users, rules)
        print(banner, flush=True)
        try:
            await gateway.serve()
        finally:
            upstream.should_exit = True
            await upstream_task

"""``bastion cache purge``: remove HTTP responses from the cache of every running gateway.

Entries live in Redis (``store.redis_url``) and in each gateway's in-process tier; a purge
deletes them from Redis and tells every gateway, over the cache's invalidation channel, to drop
its copies. Without Redis each gateway's cache is private to its process and cannot be reached
from here: the command then exits 2.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import unquote, urlsplit

import typer

from bastion.cache.http.keys import key_text, path_tag, upstream_tag
from bastion.cache.http.wiring import NAMESPACE
from bastion.cache.wiring import purge as purge_cache
from bastion.cli.common import EXIT_CONFIG, EXIT_RUNTIME, ConfigOption, fail, load_settings
from bastion.store.errors import StoreError

__all__ = ["app"]

app = typer.Typer(help="The HTTP response cache.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Every stored response of this URL's path (any query, host, user or variant); "
        "a full URL or a path.",
    ),
]
PrefixOption = Annotated[
    str | None,
    typer.Option("--prefix", help="Every stored response whose path starts with this text."),
]
TagOption = Annotated[
    str | None,
    typer.Option("--tag", help="Every stored response the upstream tagged so (Cache-Tag)."),
]


def url_path(url: str) -> str:
    """The decoded path of ``url`` (a full URL or a path), as the cache keys it."""
    path = unquote(urlsplit(url).path)
    if not path.startswith("/"):
        raise ValueError(f"{url!r} has no absolute path")
    return path


@app.command("purge")
def purge(
    url: UrlOption = None,
    prefix: PrefixOption = None,
    tag: TagOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove stored responses by URL, path prefix or tag, in every running gateway."""
    if sum(value is not None for value in (url, prefix, tag)) != 1:
        fail("give exactly one of --url, --prefix or --tag", EXIT_CONFIG)
    settings = load_settings(config)
    if not settings.store.redis_url or settings.cache.store == "memory":
        fail(
            "purging needs the shared cache (store.redis_url, cache.store not 'memory'): "
            "without it each gateway's cache lives in its own process",
            EXIT_CONFIG,
        )
    try:
        if url is not None:
            removed = asyncio.run(
                purge_cache(settings, tag=path_tag(url_path(url)), namespace=NAMESPACE)
            )
        elif prefix is not None:
            if not prefix.startswith("/"):
                fail("--prefix is a path prefix starting with '/'", EXIT_CONFIG)
            removed = asyncio.run(
                purge_cache(settings, prefix=key_text(prefix), namespace=NAMESPACE)
            )
        else:
            assert tag is not None
            removed = asyncio.run(purge_cache(settings, tag=upstream_tag(tag), namespace=NAMESPACE))
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    except StoreError as exc:
        fail(f"redis failure: {exc}", EXIT_RUNTIME)
    typer.echo(f"purged {removed} stored response{'' if removed == 1 else 's'}")

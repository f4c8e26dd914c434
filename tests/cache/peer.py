"""Another cache instance in an OS process of its own, driven line by line over stdin.

``python peer.py REDIS_URL``; commands (one JSON array per line): ``["get", key]`` answers
``{"value": …, "in_l1": bool}``; ``["held", key]`` answers whether its L1 holds ``key``;
``["set", key, value, tags]`` stores; ``["load", key]`` runs ``get_or_set`` with a loader that
counts in Redis (``loads:<key>``) and answers the value. ``ready`` is printed once subscribed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio

from bastion.cache import Cache
from bastion.cache.config import CacheConfig


async def main(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    # The lock outlasts any wait for the other process's loader, and calls wait on the test
    # Redis, however slow the machine.
    cache = Cache(CacheConfig(lock_ttl=60, timeout=15), redis=client, owns_redis=True)
    await cache.start()
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    l1 = cache.l1
    assert l1 is not None
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        op = command[0]
        if op == "get":
            in_l1 = command[1] in l1
            reply: object = {"value": await cache.get(command[1]), "in_l1": in_l1}
        elif op == "held":
            reply = command[1] in l1
        elif op == "set":
            await cache.set(command[1], command[2], tags=command[3])
            reply = True
        elif op == "load":
            key = command[1]

            async def loader(key: str = key) -> str:
                await client.incr(f"loads:{key}")
                await asyncio.sleep(0.2)
                return f"loaded {key}"

            reply = await cache.get_or_set(key, loader)
        else:
            reply = {"error": f"unknown command {op}"}
        print(json.dumps(reply), flush=True)
    await cache.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""Timing properties of logins at the real (default) argon2id cost.

These measure wall-clock time, so they compare the two sides of each question on the same
machine in the same run (medians of interleaved samples, ratios with generous margins) and
never assert an absolute duration. They take a few seconds: run them alone with
``pytest tests/auth/test_timing.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import argon2
import pytest

from auth.service_harness import CONTEXT, PASSWORD, make_user, running_service
from bastion.auth.config import AuthConfig, ThrottleConfig
from bastion.auth.errors import AuthError
from bastion.auth.service import IdentityService

SAMPLES = 30
WARM_UP = 3

# Default password parameters (the real cost); no throttle, so every attempt does the same work.
REAL_COST = AuthConfig(throttle=ThrottleConfig(enabled=False))


def _database(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'timing.db'}"


async def _failed_login(service: IdentityService, username: str) -> float:
    started = time.perf_counter()
    with pytest.raises(AuthError) as refused:
        await service.login(username, "definitely not the password", None, CONTEXT)
    elapsed = time.perf_counter() - started
    assert refused.value.code == "invalid_credentials"
    return elapsed


async def test_timing_unknown_user_and_wrong_password_take_as_long(tmp_path: Path) -> None:
    async with running_service(_database(tmp_path), config=REAL_COST) as service:
        assert service.config.passwords.memory_cost_kib == 19456
        await make_user(service)
        for _ in range(WARM_UP):
            await _failed_login(service, "alice@example.com")
            await _failed_login(service, "nobody@example.com")
        known: list[float] = []
        unknown: list[float] = []
        for index in range(SAMPLES):
            # Alternate which goes first, so drift in machine load hits both sides alike.
            pair = [("alice@example.com", known), ("nobody@example.com", unknown)]
            for username, samples in pair if index % 2 == 0 else reversed(pair):
                samples.append(await _failed_login(service, username))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.67 <= ratio <= 1.5, (
        f"unknown/known median ratio {ratio:.2f} "
        f"(known {statistics.median(known) * 1e3:.1f} ms, "
        f"unknown {statistics.median(unknown) * 1e3:.1f} ms)"
    )


async def _ticks_during(work: Callable[[], Awaitable[object]]) -> tuple[int, float]:
    """How many 1 ms sleeps another coroutine completes while ``work`` runs, and its duration."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    started = time.perf_counter()
    try:
        await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await task
    return ticks, elapsed


async def test_timing_password_hashing_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    async with running_service(_database(tmp_path), config=REAL_COST) as service:
        await make_user(service)
        params = service.config.passwords
        same_cost = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
        )

        async def login() -> object:
            return await service.login("alice@example.com", PASSWORD, None, CONTEXT)

        async def blocking_verify() -> object:
            # The same argon2 work done on the loop's own thread: the baseline of a stall.
            return same_cost.hash(PASSWORD)

        await login()  # warm up
        offloaded, login_time = await _ticks_during(login)
        blocked, blocked_time = await _ticks_during(blocking_verify)
    assert blocked <= 2, f"the baseline did not block ({blocked} ticks in {blocked_time:.3f}s)"
    assert offloaded > 5, f"only {offloaded} ticks during a {login_time * 1e3:.0f} ms login"
    assert offloaded > blocked

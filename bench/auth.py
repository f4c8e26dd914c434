"""Identity in process: what authenticating a request and logging in cost.

Everything runs in one process and one asyncio event loop, over throwaway SQLite databases, with
the full pipeline built by ``Bastion(settings).wrap`` around :func:`bench.apps.raw_hello`:

1. **Request path.** ``GET /hello`` with one rule (``path = "/hello"``, ``authenticated =
   true``), carrying an access token (EdDSA, the default) or an API key the service has already
   verified, so the credential cache answers. Each case's baseline is the same request through
   the same pipeline with ``auth.enabled = false``. Measured as :mod:`bench.micro` measures:
   interleaved batches, median batch, same run.
2. **First sight.** The same request when the token is not cached (its entry is dropped before
   every request): full verification, the account snapshot (cached), the session looked up in
   the database, the entry stored — for an HS256 and an EdDSA signing key. And verification
   alone: :meth:`TokenVerifier.verify_now` against PyJWT's ``jwt.decode`` of the same token.
3. **Login.** ``POST /_bastion/auth/login`` through the pipeline, one after the other, with the
   default argon2id parameters; and argon2id verification of the same stored hash alone.
4. **Stall.** A probe ``GET /public`` (no rule, no credential) arrives every few milliseconds
   from another thread, as requests from the network do; its latency is counted from its
   scheduled arrival. Measured with nothing else running, with logins continuously in flight,
   with argon2id verifying in threads and nothing on the loop (what CPU contention alone does),
   and — a control showing the probe sees a blocked loop — with argon2id verification run on
   the event loop itself.

``python -m bench.auth [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import argon2
import jwt
import orjson

from bastion import Bastion, Settings
from bastion.auth.admin import IdentityAdmin
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.asgi import ASGIApp, Message, Scope
from bench.apps import PATH, bastion_toml, raw_hello
from bench.loadgen import percentile, summarize
from bench.micro import (
    MicroCase,
    MicroResult,
    StatusSink,
    access_log_to_devnull,
    empty_body,
    pipeline_chain,
    request_scope,
    run_batch,
)

__all__ = [
    "CACHED_TARGET_US",
    "QUICK",
    "STALL_ALLOWANCE_MS",
    "AuthParams",
    "AuthResult",
    "LoginResult",
    "StallResult",
    "VerifyCase",
    "run_auth",
]

CACHED_TARGET_US = 20.0
"""Most a request with an already verified access token may add, in microseconds."""
STALL_ALLOWANCE_MS = 1.0
"""How much logins may raise another request's p99 for it to count as unaffected: far below
one argon2id verification (tens of milliseconds), which a hash on the loop would add."""
PYJWT_REFERENCE_US = {"HS256": 42.0, "EdDSA": 140.0}
"""PyJWT's verification cost quoted in the issue, for comparison with this run's figure."""

USERNAME = "bench@example.com"
PASSWORD = "correct horse battery staple"
PROTECTED_RULE = {"path": PATH, "authenticated": True}
PROBE_PATH = "/public"
HASH_THREADS = 2
"""Threads of :class:`bastion.auth.passwords.PasswordHasher`'s pool (its default)."""
LOGIN_BODY = orjson.dumps({"username": USERNAME, "password": PASSWORD})

AUTH_OFF = "auth off"
AUTH_OFF_BEARER = "auth off, Bearer header"
AUTH_OFF_KEY = "auth off, X-API-Key header"
AUTH_IDLE = "auth on, no rules, no credential"
CACHED_BEARER = "Bearer access token, cached"
CACHED_KEY = "API key, cached"
FIRST_SIGHT = "Bearer access token, first sight ({alg})"


@dataclass(frozen=True)
class AuthParams:
    """How much of each part to run."""

    iterations: int = 5000
    """Requests per batch of the cached and baseline cases."""
    batches: int = 7
    first_sight_iterations: int = 300
    """Requests per batch of the first-sight cases (each one reads the database)."""
    verify_iterations: int = 1000
    """Verifications per batch of the verification-alone cases."""
    logins: int = 30
    argon2_runs: int = 15
    stall_seconds: float = 3.0
    """Length of each stall phase."""
    concurrency: int = 4
    """Logins kept in flight during the loaded stall phase."""
    probe_interval_ms: float = 2.0


QUICK = AuthParams(
    iterations=1000,
    batches=3,
    first_sight_iterations=60,
    verify_iterations=200,
    logins=8,
    argon2_runs=5,
    stall_seconds=1.0,
)


@dataclass
class VerifyCase:
    """Verification alone, nanoseconds per token for each batch."""

    algorithm: str
    bastion_ns: list[float] = field(default_factory=list)
    pyjwt_ns: list[float] = field(default_factory=list)

    @property
    def bastion_us(self) -> float:
        return statistics.median(self.bastion_ns) / 1000.0

    @property
    def pyjwt_us(self) -> float:
        return statistics.median(self.pyjwt_ns) / 1000.0


@dataclass
class LoginResult:
    """Milliseconds per login through the pipeline and per argon2id verification alone."""

    login_ms: list[float]
    argon2_ms: list[float]
    parameters: str

    @staticmethod
    def _pct(values: Sequence[float], pct: float) -> float:
        return percentile(sorted(values), pct)

    @property
    def login_p50(self) -> float:
        return self._pct(self.login_ms, 50)

    @property
    def login_p95(self) -> float:
        return self._pct(self.login_ms, 95)

    @property
    def argon2_p50(self) -> float:
        return self._pct(self.argon2_ms, 50)

    @property
    def argon2_p95(self) -> float:
        return self._pct(self.argon2_ms, 95)


@dataclass
class StallResult:
    """Probe latency (ms, from the scheduled arrival) per phase, each a
    :func:`bench.loadgen.summarize` dictionary plus ``count``: ``idle`` (nothing else runs),
    ``logins`` (logins in flight), ``threads`` (argon2id verifying in as many threads as the
    hasher's pool, and nothing on the loop) and ``on_loop`` (argon2id on the loop: the control)."""

    path: str
    interval_ms: float
    seconds: float
    concurrency: int
    phases: dict[str, dict[str, float]]
    logins: dict[str, int]
    """Status code → logins completed during the loaded phase."""

    def added_p99(self) -> float:
        return self.phases["logins"]["p99"] - self.phases["idle"]["p99"]

    def met(self) -> bool:
        return self.added_p99() <= STALL_ALLOWANCE_MS and set(self.logins) == {"200"}


@dataclass
class AuthResult:
    params: dict[str, Any]
    requests: MicroResult
    """The pipeline cases; ``net_us`` of an auth case is its cost over the auth-off request."""
    verify: list[VerifyCase]
    login: LoginResult
    stall: StallResult

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["requests"] = self.requests.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthResult:
        return cls(
            params=dict(data["params"]),
            requests=MicroResult.from_json(data["requests"]),
            verify=[VerifyCase(**v) for v in data["verify"]],
            login=LoginResult(**data["login"]),
            stall=StallResult(**data["stall"]),
        )


# ---------------------------------------------------------------- set-up


@dataclass
class _Engine:
    engine: Bastion
    app: ASGIApp

    @property
    def service(self) -> IdentityService:
        identity = self.engine.identity
        if identity is None:
            raise RuntimeError("auth is off in this engine")
        return identity.service


async def _engine(directory: Path, name: str, **auth: Any) -> _Engine:
    path = directory / f"bastion-{name}.toml"
    path.write_text(bastion_toml(directory / f"bastion-{name}.db"))
    settings = Settings.from_file(path)
    if auth:
        settings = settings.with_updates(auth=auth)
    engine = Bastion(settings)
    await engine.startup()
    return _Engine(engine, engine.wrap(raw_hello))


async def _user_token(service: IdentityService, *, api_key: bool = False) -> tuple[str, str]:
    """Create the benchmark user; returns an access token and (optionally) an API key."""
    admin = IdentityAdmin(service)
    await admin.create_user(USERNAME, PASSWORD)
    pair = await service.login(USERNAME, PASSWORD, None, RequestContext(client_ip="127.0.0.1"))
    key = (await admin.create_api_key(USERNAME, name="bench")).key if api_key else ""
    return pair.access_token, key


def _scopes(header: tuple[bytes, bytes] | None, path: str = PATH) -> Callable[[], Scope]:
    template = request_scope()
    template["path"] = path
    template["raw_path"] = path.encode()
    if header is not None:
        template["headers"] = [*template["headers"], header]
    copy = template.copy
    return lambda: copy()


def _first_sight_scopes(service: IdentityService, token: str) -> Callable[[], Scope]:
    """Requests presenting ``token`` with its cache entry dropped first: a first sight."""
    make = _scopes((b"authorization", b"Bearer " + token.encode()))
    discard = service.credentials.discard

    def first_sight() -> Scope:
        discard(token)
        return make()

    return first_sight


def _bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token.encode())


# ---------------------------------------------------------------- measurement


def _verify_loop(verify: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        verify()
    return (time.perf_counter_ns() - start) / iterations


def _verifiers(service: IdentityService, token: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Bastion's verification and PyJWT's ``jwt.decode`` of ``token``, same key object."""
    key = service.signing.ring.signing
    config = service.config.tokens
    verify_now = service.verifier.verify_now
    decode = jwt.decode
    algorithms = [key.algorithm]
    public = key.public_key
    if (
        verify_now(token)["sub"]
        != decode(
            token, public, algorithms=algorithms, audience=config.audience, issuer=config.issuer
        )["sub"]
    ):
        raise RuntimeError("Bastion and PyJWT disagree on the token")
    return (
        lambda: verify_now(token),
        lambda: decode(
            token, public, algorithms=algorithms, audience=config.audience, issuer=config.issuer
        ),
    )


async def _requests_and_verify(
    params: AuthParams,
    off: _Engine,
    idle: _Engine,
    eddsa: _Engine,
    hs256: _Engine,
    tokens: dict[str, str],
    api_key: str,
    progress: Callable[[str], None] | None,
) -> tuple[MicroResult, list[VerifyCase]]:
    bearer = _bearer(tokens["EdDSA"])
    key_header = (b"x-api-key", api_key.encode())
    off_config = "auth.enabled = false"
    rule = f'[[auth.rules]] path = "{PATH}", authenticated = true'
    runs: list[tuple[MicroCase, ASGIApp, Callable[[], Scope], int]] = [
        (MicroCase(AUTH_OFF, "baseline", None, off_config), off.app, _scopes(None), 0),
        (MicroCase(AUTH_OFF_BEARER, "baseline", None, off_config), off.app, _scopes(bearer), 0),
        (MicroCase(AUTH_OFF_KEY, "baseline", None, off_config), off.app, _scopes(key_header), 0),
        (MicroCase(AUTH_IDLE, "idle", AUTH_OFF, "defaults"), idle.app, _scopes(None), 0),
        (
            MicroCase(CACHED_BEARER, "cached", AUTH_OFF_BEARER, rule),
            eddsa.app,
            _scopes(bearer),
            0,
        ),
        (MicroCase(CACHED_KEY, "cached", AUTH_OFF_KEY, rule), eddsa.app, _scopes(key_header), 0),
    ]
    for alg, engine in (("HS256", hs256), ("EdDSA", eddsa)):
        config = rule + ('; auth.tokens.algorithm = "HS256"' if alg == "HS256" else "")
        runs.append(
            (
                MicroCase(FIRST_SIGHT.format(alg=alg), "first sight", AUTH_OFF_BEARER, config),
                engine.app,
                _first_sight_scopes(engine.service, tokens[alg]),
                params.first_sight_iterations,
            )
        )
    verify = [VerifyCase(alg) for alg in ("HS256", "EdDSA")]
    pairs = [
        (case, *_verifiers(engine.service, tokens[case.algorithm]))
        for case, engine in zip(verify, (hs256, eddsa), strict=True)
    ]

    for case, app, scopes, count in runs:
        sink = StatusSink()
        await run_batch(app, scopes, sink, max(1, (count or params.iterations) // 10))
        if sink.status != 200:
            raise RuntimeError(f"{case.name}: answered {sink.status}, expected 200")
    if eddsa.service.credentials.get(tokens["EdDSA"]) is None:
        raise RuntimeError("the access token is not in the credential cache after warm-up")
    for index in range(params.batches):
        if progress is not None:
            progress(f"requests: batch {index + 1}/{params.batches}")
        for case, app, scopes, count in runs:
            gc.collect()
            sink = StatusSink()
            case.ns_batches.append(await run_batch(app, scopes, sink, count or params.iterations))
            if sink.status != 200:
                raise RuntimeError(f"{case.name}: answered {sink.status}, expected 200")
        for verify_case, ours, theirs in pairs:
            gc.collect()
            verify_case.bastion_ns.append(_verify_loop(ours, params.verify_iterations))
            gc.collect()
            verify_case.pyjwt_ns.append(_verify_loop(theirs, params.verify_iterations))
    requests = MicroResult(
        iterations=params.iterations,
        batches=params.batches,
        cases=[case for case, *_ in runs],
        chain=pipeline_chain(eddsa.app),
    )
    return requests, verify


def _login_scope() -> Scope:
    scope = request_scope()
    scope["method"] = "POST"
    scope["path"] = "/_bastion/auth/login"
    scope["raw_path"] = b"/_bastion/auth/login"
    scope["headers"] = [
        *scope["headers"],
        (b"content-type", b"application/json"),
        (b"content-length", str(len(LOGIN_BODY)).encode()),
    ]
    return scope


async def _login_body() -> Message:
    return {"type": "http.request", "body": LOGIN_BODY, "more_body": False}


async def _login(app: ASGIApp) -> int:
    sink = StatusSink()
    await app(_login_scope(), _login_body, sink)
    return sink.status


async def _logins(params: AuthParams, engine: _Engine) -> LoginResult:
    for _ in range(2):  # warm-up: the hashing threads start on first use
        if (status := await _login(engine.app)) != 200:
            raise RuntimeError(f"login answered {status}, expected 200")
    login_ms = []
    for _ in range(params.logins):
        start = time.perf_counter()
        status = await _login(engine.app)
        login_ms.append((time.perf_counter() - start) * 1000.0)
        if status != 200:
            raise RuntimeError(f"login answered {status}, expected 200")
    user = await engine.service.store.user_by_name(USERNAME)
    if user is None or user.password_hash is None:
        raise RuntimeError("the benchmark user has no password hash")
    stored = user.password_hash
    hasher = argon2.PasswordHasher()
    argon2_ms = []
    for _ in range(params.argon2_runs):
        start = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        argon2_ms.append((time.perf_counter() - start) * 1000.0)
    config = engine.engine.settings.auth.passwords
    parameters = (
        f"argon2id, time_cost {config.time_cost}, memory {config.memory_cost_kib} KiB, "
        f"parallelism {config.parallelism}"
    )
    return LoginResult(login_ms=login_ms, argon2_ms=argon2_ms, parameters=parameters)


def _arrivals(
    loop: asyncio.AbstractEventLoop,
    submit: Callable[[float], None],
    interval: float,
    count: int,
) -> None:
    """Runs in its own thread: schedules ``count`` probes ``interval`` seconds apart, handing
    each to the loop the way a socket's readiness wakes it."""
    start = time.perf_counter()
    for index in range(count):
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        loop.call_soon_threadsafe(submit, scheduled)


async def _probe(app: ASGIApp, params: AuthParams) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    scopes = _scopes(None, PROBE_PATH)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        sink = StatusSink()
        await app(scopes(), empty_body, sink)
        latencies.append(time.perf_counter() - scheduled)
        statuses[sink.status] += 1

    def submit(scheduled: float) -> None:
        task = loop.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    interval = params.probe_interval_ms / 1000.0
    count = max(1, round(params.stall_seconds / interval))
    thread = threading.Thread(target=_arrivals, args=(loop, submit, interval, count))
    thread.start()
    while thread.is_alive() or tasks:
        await asyncio.sleep(0.01)
    thread.join()
    if set(statuses) != {200}:
        raise RuntimeError(f"probe answered {dict(statuses)}, expected only 200")
    return {**summarize(latencies), "count": float(len(latencies))}


async def _stall(params: AuthParams, engine: _Engine) -> StallResult:
    phases: dict[str, dict[str, float]] = {}
    await _probe(engine.app, replace(params, stall_seconds=min(0.5, params.stall_seconds)))
    phases["idle"] = await _probe(engine.app, params)

    stop = asyncio.Event()
    statuses: Counter[int] = Counter()

    async def keep_logging_in() -> None:
        while not stop.is_set():
            statuses[await _login(engine.app)] += 1

    workers = [asyncio.create_task(keep_logging_in()) for _ in range(params.concurrency)]
    try:
        await asyncio.sleep(0.2)  # every worker has a login in flight
        phases["logins"] = await _probe(engine.app, params)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    user = await engine.service.store.user_by_name(USERNAME)
    stored = user.password_hash if user is not None else None
    if stored is None:
        raise RuntimeError("the benchmark user has no password hash")
    hasher = argon2.PasswordHasher()
    blocking = asyncio.Event()

    async def hash_on_the_loop() -> None:
        while not blocking.is_set():
            hasher.verify(stored, PASSWORD)  # deliberately blocking: the control
            await asyncio.sleep(0)

    spinning = threading.Event()

    def hash_in_a_thread() -> None:
        while not spinning.is_set():
            hasher.verify(stored, PASSWORD)

    threads = [threading.Thread(target=hash_in_a_thread) for _ in range(HASH_THREADS)]
    for thread in threads:
        thread.start()
    try:
        phases["threads"] = await _probe(engine.app, params)
    finally:
        spinning.set()
        for thread in threads:
            thread.join()

    control = asyncio.create_task(hash_on_the_loop())
    try:
        phases["on_loop"] = await _probe(engine.app, params)
    finally:
        blocking.set()
        await control
    return StallResult(
        path=PROBE_PATH,
        interval_ms=params.probe_interval_ms,
        seconds=params.stall_seconds,
        concurrency=params.concurrency,
        phases=phases,
        logins={str(code): count for code, count in sorted(statuses.items())},
    )


async def _measure(
    params: AuthParams, directory: Path, progress: Callable[[str], None] | None
) -> AuthResult:
    rules = [PROTECTED_RULE]
    engines: list[_Engine] = []
    try:
        off = await _engine(directory, "off", enabled=False)
        engines.append(off)
        idle = await _engine(directory, "idle")
        engines.append(idle)
        eddsa = await _engine(directory, "eddsa", rules=rules)
        engines.append(eddsa)
        hs256 = await _engine(directory, "hs256", rules=rules, tokens={"algorithm": "HS256"})
        engines.append(hs256)
        if progress is not None:
            progress("creating users")
        eddsa_token, api_key = await _user_token(eddsa.service, api_key=True)
        hs256_token, _ = await _user_token(hs256.service)
        tokens = {"EdDSA": eddsa_token, "HS256": hs256_token}
        requests, verify = await _requests_and_verify(
            params, off, idle, eddsa, hs256, tokens, api_key, progress
        )
        if progress is not None:
            progress("logins")
        login = await _logins(params, eddsa)
        if progress is not None:
            progress("stall")
        stall = await _stall(params, eddsa)
    finally:
        for item in reversed(engines):
            await item.engine.shutdown()
    return AuthResult(
        params=asdict(params), requests=requests, verify=verify, login=login, stall=stall
    )


def run_auth(params: AuthParams, *, progress: Callable[[str], None] | None = None) -> AuthResult:
    """Measure every part with ``params``."""
    with tempfile.TemporaryDirectory(prefix="bastion-auth-bench-") as tmp:
        return asyncio.run(_measure(params, Path(tmp), progress))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    with access_log_to_devnull():
        result = run_auth(
            QUICK if args.quick else AuthParams(),
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

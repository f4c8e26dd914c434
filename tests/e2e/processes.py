"""Processes for end-to-end tests: real ``bastion serve`` and demo upstream processes.

Every process runs in its own working directory (so no ``./bastion.toml`` or database of the
checkout is picked up) with an environment cleaned of ``BASTION_*`` variables, on a free
loopback port, with its output collected in a log file.

- :func:`start_bastion`: ``bastion serve`` with given arguments and an optional configuration
  (TOML text or a file); returns once ``/_bastion/health`` answers 200.
- :func:`start_demo`: ``python -m bastion.demo``; returns once its ``/health`` answers 200.
- :meth:`ServerProcess.stop`: SIGTERM, wait, and the collected output.
- :class:`Processes`: starts several and stops them all (the ``processes`` and
  ``module_processes`` fixtures of ``tests/e2e/conftest.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_BIN = Path(sys.executable).parent
_START_TIMEOUT = 90.0
"""Generous: a cold start imports every capability and migrates, and CI machines are shared.
A server that starts fine returns as soon as it answers."""
_STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without ``BASTION_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A server process on ``port`` whose output goes to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workdir: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> str:
        """Send SIGTERM, wait for the exit (SIGKILL after ``timeout``), return the output."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        close = getattr(self._log_file, "close", None)
        if close is not None:
            close()
        return self.output()


def wait_until_ready(process: ServerProcess, path: str, timeout: float = _START_TIMEOUT) -> None:
    """Poll ``GET path`` until it answers 200; fail with the process output if it exits or the
    timeout passes."""
    deadline = time.monotonic() + timeout
    url = process.url + path
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"{process.name} exited early:\n{process.stop()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    output = process.stop()
    raise RuntimeError(f"{process.name} did not answer {url} within {timeout}s:\n{output}")


def _spawn(
    name: str, argv: Sequence[str], workdir: Path, env: dict[str, str], port: int
) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        list(argv), cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    return ServerProcess(name, popen, port, log_path, workdir, log_file)


def start_bastion(
    workdir: Path,
    *args: str,
    config: str | Path | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServerProcess:
    """Start ``bastion serve --port P *args`` in ``workdir`` and wait for its health probe.

    ``config`` is TOML text (written to ``workdir/bastion.toml``) or a path passed with
    ``--config``. The database defaults to a SQLite file in ``workdir``.
    """
    port = port or free_port()
    argv = [str(_BIN / "bastion"), "serve", "--port", str(port), *args]
    if isinstance(config, Path):
        argv += ["--config", str(config)]
    elif config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "bastion.toml"
        path.write_text(config, encoding="utf-8")
        argv += ["--config", str(path)]
    variables = {"BASTION_STORE__DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bastion.db"}
    variables.update(env or {})
    process = _spawn("bastion", argv, workdir, clean_env(variables), port)
    wait_until_ready(process, "/_bastion/health")
    return process


def start_demo(workdir: Path, *, port: int | None = None) -> ServerProcess:
    """Start the demo upstream (``python -m bastion.demo --port P``) and wait for ``/health``."""
    port = port or free_port()
    argv = [sys.executable, "-m", "bastion.demo", "--port", str(port)]
    process = _spawn("demo", argv, workdir, clean_env(), port)
    wait_until_ready(process, "/health")
    return process


class Processes:
    """Starts processes in numbered working directories and stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._started: list[ServerProcess] = []

    def _workdir(self, name: str) -> Path:
        return self._root / f"{len(self._started):02d}-{name}"

    def bastion(
        self,
        *args: str,
        config: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        process = start_bastion(self._workdir("bastion"), *args, config=config, env=env)
        self._started.append(process)
        return process

    def demo(self) -> ServerProcess:
        process = start_demo(self._workdir("demo"))
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self._started):
            process.stop()

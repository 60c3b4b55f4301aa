"""The service as a real process (`taskrun-api serve`, uvicorn workers) on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class RunningServer:
    """A started server: `api_url` ends with /api."""

    base_url: str
    process: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_server(
    database_url: str,
    *,
    workers: int = 2,
    environment: dict[str, str] | None = None,
    output: Path | None = None,
) -> Iterator[RunningServer]:
    """Migrate `database_url`, serve it, wait until it answers; stop it afterwards.

    With `output`, what the server writes to stdout and stderr goes to that file.
    """
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        **(environment or {}),
    }
    command = [
        sys.executable, "-m", "app.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with ExitStack() as stack:
        log = stack.enter_context(output.open("wb")) if output else None
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None
        )
        server = RunningServer(base_url=f"http://127.0.0.1:{port}", process=process)
        try:
            _wait_until_serving(server)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_SECONDS} s")

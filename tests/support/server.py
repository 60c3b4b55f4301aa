"""The service as a real process (`taskrun-api serve`, uvicorn workers) on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class RunningServer:
    """A started server: `api_url` ends with /api."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def worker_pids(self) -> list[int]:
        """The worker processes (the supervisor's children but multiprocessing's tracker)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [int(child) for child in children if _is_worker(int(child))]

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        assert self.log_path is not None, "start the server with a log_path"
        return self.log_path.read_text(errors="replace")

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every worker at once, as a power cut would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _is_worker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spawn_main" in command and b"resource_tracker" not in command


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(
    database_url: str,
    *,
    workers: int = 2,
    environment: dict[str, str] | None = None,
    log_path: Path | None = None,
    port: int | None = None,
    start_timeout: float = START_TIMEOUT_SECONDS,
) -> RunningServer:
    """Migrate `database_url` and serve it in a process group of its own; wait until it answers.

    With `log_path`, the server's output goes to that file (appended) instead of the test's.
    """
    port = port or free_port()
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
    output = log_path.open("ab") if log_path is not None else None
    try:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=output, start_new_session=True
        )
    finally:
        if output is not None:
            output.close()
    server = RunningServer(base_url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        _wait_until_serving(server, timeout=start_timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: RunningServer) -> None:
    """SIGTERM the server and wait for it; SIGKILL everything left after 20 s."""
    if server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill_all()


@contextmanager
def running_server(
    database_url: str,
    *,
    workers: int = 2,
    environment: dict[str, str] | None = None,
    log_path: Path | None = None,
    port: int | None = None,
    start_timeout: float = START_TIMEOUT_SECONDS,
) -> Iterator[RunningServer]:
    """Migrate `database_url`, serve it (on `port`, or a free one), wait until it answers;
    stop it afterwards.
    """
    server = start_server(
        database_url,
        workers=workers,
        environment=environment,
        log_path=log_path,
        port=port,
        start_timeout=start_timeout,
    )
    try:
        yield server
    finally:
        stop_server(server)


def _wait_until_serving(server: RunningServer, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout} s")

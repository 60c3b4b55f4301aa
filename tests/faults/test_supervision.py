"""Worker supervision: slow starts are waited for, stalled workers are replaced, workers
stop with their supervisor.

On SQLite, a stalled worker that holds the writer lock cannot keep the other workers'
writers waiting beyond the lock timeout, and is replaced after the health-check timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import httpx
import pytest

from app.serving.listening import listening_socket
from tests.support.faults import busy_cpus, flock_holder, wait_for
from tests.support.server import RunningServer, running_server

LOCK_TIMEOUT = 1.5
HEALTHCHECK_TIMEOUT = 4.0


class TestStartUp:
    def test_workers_start_on_a_saturated_cpu_without_being_replaced(self, tmp_path: Path) -> None:
        spinners = 3 * (os.cpu_count() or 2)
        url = f"sqlite:///{tmp_path / 'taskrun.db'}"
        with (
            busy_cpus(spinners),
            running_server(url, log_path=tmp_path / "server.log", start_timeout=240) as server,
        ):
            workers = server.worker_pids()
            answers = [httpx.get(f"{server.api_url}/health", timeout=30) for _ in range(10)]
            time.sleep(2)  # a few more rounds of the supervisor's checks, still saturated
            workers_later = server.worker_pids()

        assert len(workers) == 2
        assert workers_later == workers
        assert [answer.status_code for answer in answers] == [200] * 10
        assert "starting another" not in server.log()


class TestStalledWorker:
    def test_a_stalled_lock_holder_delays_writers_at_most_the_lock_timeout_and_is_replaced(
        self, tmp_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        environment = {
            "DATABASE_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
            "WORKER_HEALTHCHECK_TIMEOUT": str(HEALTHCHECK_TIMEOUT),
        }
        with running_server(
            f"sqlite:///{database}", environment=environment, log_path=tmp_path / "server.log"
        ) as server:
            load = CreateLoad(server.api_url)
            load.start()
            try:
                stalled = stop_the_lock_holder(server, Path(f"{database}-write.lock"))
                stopped_at = time.monotonic()
                load.stopping.set()  # its requests in flight stay stuck on the stalled worker
                # New connections: the stalled worker accepts none, the other takes them all.
                probes = []
                while time.monotonic() - stopped_at < HEALTHCHECK_TIMEOUT + 10:
                    probes.append(timed_create(server.api_url, since=stopped_at))
                    if probes[-1][1] == 201:
                        break
            finally:
                load.stop()
            replaced = wait_for(lambda: stalled not in server.worker_pids(), timeout=10)
            assert wait_for(lambda: len(server.worker_pids()) == 2, timeout=60), server.log()

        assert replaced, server.log()
        assert probes[0][1] == 503  # the other worker's writer gave up on the stalled lock
        assert max(took for _, _, took in probes) < LOCK_TIMEOUT + 1.5
        assert {status for _, status, _ in probes} == {201, 503}
        answered_at = probes[-1][0] + probes[-1][2]
        assert HEALTHCHECK_TIMEOUT <= answered_at < HEALTHCHECK_TIMEOUT + 4
        assert {status for _, status, _ in load.answers} <= {201, 503, None}
        assert "did not answer the health check within 4 s" in server.log()


class TestSupervisorKilled:
    def test_the_workers_stop_and_free_the_port(self, tmp_path: Path) -> None:
        with running_server(
            f"sqlite:///{tmp_path / 'taskrun.db'}", log_path=tmp_path / "server.log"
        ) as server:
            workers = server.worker_pids()
            assert len(workers) == 2
            os.kill(server.process.pid, signal.SIGKILL)  # as a manager that kills the main pid
            server.process.wait()
            try:
                stopped = wait_for(lambda: not any(map(is_running, workers)), timeout=10)
            finally:
                for pid in filter(is_running, workers):
                    os.kill(pid, signal.SIGKILL)

        assert stopped, server.log()
        listening_socket("127.0.0.1", server.port).close()  # the next start can listen
        assert "is gone; stopping" in server.log()


def is_running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def timed_create(api_url: str, *, since: float) -> tuple[float, int, float]:
    """(sent at, since `since`; status; seconds taken) of one create on a new connection."""
    sent = time.monotonic()
    body = {"task_key": f"probe-{uuid.uuid4().hex}", "dynamic_key": "0"}
    status = httpx.post(f"{api_url}/task_runs/", json=body, timeout=60).status_code
    return sent - since, status, time.monotonic() - sent


def stop_the_lock_holder(server: RunningServer, lock_file: Path) -> int:
    """SIGSTOP a worker at a moment it holds the writer lock; its pid."""
    assert wait_for(lock_file.exists, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGSTOP)
            # The signal takes effect a little later: until then the worker may let go.
            assert wait_for(partial(is_stopped, pid), timeout=5, interval=0.001)
            if flock_holder(lock_file) == pid:
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    pytest.fail("no worker was caught holding the writer lock")


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


class CreateLoad:
    """Creates sent from a few threads, each answer recorded as (sent at, status, seconds)."""

    def __init__(self, api_url: str, *, threads: int = 4) -> None:
        self.api_url = api_url
        self.answers: list[tuple[float, int | None, float]] = []
        self.stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        # A new connection per request: a connection to the stalled worker hangs only once.
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self.stopping.is_set():
                sent = time.monotonic()
                body = {"task_key": f"load-{uuid.uuid4().hex}", "dynamic_key": "0"}
                try:
                    status: int | None = client.post(
                        f"{self.api_url}/task_runs/", json=body
                    ).status_code
                except httpx.TransportError:
                    status = None  # in flight on the stalled worker when it was replaced
                self.answers.append((sent, status, time.monotonic() - sent))

"""Worker supervision: slow starts are waited for, stalled workers are replaced.

On SQLite, a stalled worker that holds the writer lock cannot keep the other workers'
writers waiting beyond the lock timeout, and is replaced after the health-check timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.faults import busy_cpus, flock_holder, wait_for
from tests.support.server import RunningServer, running_server

LOCK_TIMEOUT = 2.0
HEALTHCHECK_TIMEOUT = 2.0


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
                replaced = wait_for(lambda: stalled not in server.worker_pids(), timeout=20)
                replaced_after = time.monotonic() - stopped_at
                time.sleep(1)  # creates after the replacement
            finally:
                load.stop()
            assert wait_for(lambda: len(server.worker_pids()) == 2, timeout=60), server.log()
            final = httpx.post(
                f"{server.api_url}/task_runs/", json={"task_key": "after", "dynamic_key": "0"}
            )

        assert replaced, server.log()
        assert replaced_after < HEALTHCHECK_TIMEOUT + 3
        answered = [(sent, status, took) for sent, status, took in load.answers if status]
        during = [
            entry for entry in answered if stopped_at < entry[0] < stopped_at + replaced_after
        ]
        assert during, "no create was answered while the worker was stalled"
        assert {status for _, status, _ in answered} <= {201, 503}
        assert max(took for _, _, took in during) < LOCK_TIMEOUT + 2
        assert any(
            status == 201 and sent > stopped_at + replaced_after for sent, status, _ in answered
        )
        assert final.status_code == 201
        assert "did not answer the health check within 2 s" in server.log()


def stop_the_lock_holder(server: RunningServer, lock_file: Path) -> int:
    """SIGSTOP a worker at a moment it holds the writer lock; its pid."""
    assert wait_for(lock_file.exists, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGSTOP)
            if flock_holder(lock_file) == pid:
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    pytest.fail("no worker was caught holding the writer lock")


class CreateLoad:
    """Creates sent from a few threads, each answer recorded as (sent at, status, seconds)."""

    def __init__(self, api_url: str, *, threads: int = 4) -> None:
        self.api_url = api_url
        self.answers: list[tuple[float, int | None, float]] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        # A new connection per request: a connection to the stalled worker hangs only once.
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self._stopping.is_set():
                sent = time.monotonic()
                body = {"task_key": f"load-{uuid.uuid4().hex}", "dynamic_key": "0"}
                try:
                    status: int | None = client.post(
                        f"{self.api_url}/task_runs/", json=body
                    ).status_code
                except httpx.TransportError:
                    status = None  # in flight on the stalled worker when it was replaced
                self.answers.append((sent, status, time.monotonic() - sent))

"""SQLite faults on a served database: answered 503 with Retry-After, recovered from alone.

Each test runs the service on a database of its own, brings about a real fault (a full file
system, files nobody may write, a lock held elsewhere), checks every answer during it, ends
it and checks that the service recovers without a restart and lost nothing it acknowledged.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.faults import fill, set_immutable, small_tmpfs, wait_for
from tests.support.server import RunningServer, running_server

# A task key that must never appear in the logs: they name errors, not the rows.
SECRET = "secret-row-content-7f3a"
LOCK_TIMEOUT = 1.0


def create(client: httpx.Client, *, data_bytes: int = 0) -> httpx.Response:
    body: dict[str, Any] = {"task_key": f"{SECRET}-{uuid.uuid4().hex}", "dynamic_key": "0"}
    if data_bytes:
        body["state"] = {"type": "COMPLETED", "data": "x" * data_bytes}
    return client.post("/task_runs/", json=body)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert "nothing was changed" in response.json()["detail"]


def assert_all_readable(client: httpx.Client, ids: list[str]) -> None:
    for run_id in ids:
        response = client.get(f"/task_runs/{run_id}")
        assert response.status_code == 200, (run_id, response.text)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


class TestDiskFull:
    @pytest.fixture
    def server(self, tmp_path: Path, log_path: Path) -> Iterator[RunningServer]:
        with (
            small_tmpfs(tmp_path / "disk", size="16m") as disk,
            running_server(f"sqlite:///{disk / 'taskrun.db'}", log_path=log_path) as running,
        ):
            yield running

    def test_creates_are_503_while_the_disk_is_full_and_succeed_after(
        self, server: RunningServer
    ) -> None:
        database_directory = Path(server.log_path.parent / "disk")  # type: ignore[union-attr]
        with httpx.Client(base_url=server.api_url, timeout=30) as client:
            acknowledged = [create(client).json()["id"] for _ in range(5)]
            filler = fill(database_directory)
            during = [create(client, data_bytes=200_000) for _ in range(20)]
            read_during = client.get(f"/task_runs/{acknowledged[0]}")
            filler.unlink()
            recovered = wait_for(lambda: create(client).status_code == 201, timeout=5)
            after = [create(client) for _ in range(5)]
            acknowledged += [r.json()["id"] for r in during + after if r.status_code == 201]
            assert_all_readable(client, acknowledged)

        refused = [response for response in during if response.status_code != 201]
        assert refused, "the full disk refused nothing"
        for response in refused:
            assert_unavailable(response)
        assert read_during.status_code == 200
        assert recovered
        assert [response.status_code for response in after] == [201] * 5
        log = server.log()
        assert "database unavailable (OperationalError SQLITE_FULL)" in log
        assert SECRET not in log
        assert "Traceback" not in log


class TestUnwritableFiles:
    def test_every_request_is_503_while_the_files_are_immutable_and_none_after(
        self, tmp_path: Path, log_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        with (
            running_server(f"sqlite:///{database}", log_path=log_path) as server,
            httpx.Client(base_url=server.api_url, timeout=30) as client,
        ):
            acknowledged = [create(client).json()["id"] for _ in range(5)]
            workers = server.worker_pids()
            set_immutable(files, immutable=True)
            try:
                during = [create(client) for _ in range(10)]
                reads_during = [client.get(f"/task_runs/{run_id}") for run_id in acknowledged]
            finally:
                set_immutable(files, immutable=False)
            recovered = wait_for(lambda: create(client).status_code == 201, timeout=5)
            after = [create(client) for _ in range(10)]
            assert_all_readable(client, acknowledged + [r.json()["id"] for r in after])
            workers_after = server.worker_pids()

        for response in during + reads_during:
            assert_unavailable(response)
        assert recovered
        assert [response.status_code for response in after] == [201] * 10
        assert workers_after == workers, "a worker died"
        assert "database unavailable (the database files cannot be written)" in server.log()
        assert SECRET not in server.log()


class TestLockedDatabase:
    def test_writes_wait_for_the_lock_timeout_then_503_while_reads_go_on(
        self, tmp_path: Path, log_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        environment = {"DATABASE_LOCK_TIMEOUT": str(LOCK_TIMEOUT)}
        with (
            running_server(
                f"sqlite:///{database}", environment=environment, log_path=log_path
            ) as server,
            httpx.Client(base_url=server.api_url, timeout=30) as client,
        ):
            acknowledged = [create(client).json()["id"] for _ in range(3)]
            holding, release = threading.Event(), threading.Event()
            holder = threading.Thread(target=hold_write_lock, args=(database, holding, release))
            holder.start()
            assert holding.wait(timeout=10)
            try:
                started = time.monotonic()
                during = create(client)
                waited = time.monotonic() - started
                read_during = client.get(f"/task_runs/{acknowledged[0]}")
            finally:
                release.set()
                holder.join()
            after = create(client)

        assert_unavailable(during)
        assert LOCK_TIMEOUT * 0.9 <= waited < LOCK_TIMEOUT + 2
        assert read_during.status_code == 200
        assert after.status_code == 201
        assert "database unavailable (OperationalError SQLITE_BUSY)" in server.log()


def hold_write_lock(database: Path, holding: threading.Event, release: threading.Event) -> None:
    """Hold SQLite's write lock from another connection until `release` is set."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(timeout=30)
        connection.execute("ROLLBACK")
    finally:
        connection.close()

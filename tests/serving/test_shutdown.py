"""SIGTERM to a real server: it stops accepting, finishes what is in flight, closes the
database and exits 0.

The request in flight is made slow without any help from the service: the test holds what
a create must wait for (the SQLite writers' file lock, or a PostgreSQL table lock), sends
SIGTERM while the create waits, then lets go.
"""

from __future__ import annotations

import fcntl
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from app.db.database import normalise_url
from app.db.tables import task_run
from tests.support.databases import empty_database
from tests.support.metrics import Scrape
from tests.support.server import RunningServer, running_server

WAIT_SECONDS = 30


@contextmanager
def writes_held(database_url: str) -> Iterator[None]:
    """Make every write to the database wait until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with Path(f"{url.database}-write.lock").open("ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield
        return
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(text("LOCK TABLE task_run IN EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def waits_for_the_database(server: RunningServer) -> bool:
    """Whether one request is in flight and holds a database connection (the create)."""
    scrape = Scrape.of(server)
    return (
        scrape.value("taskrun_http_requests_in_flight") == 1
        and scrape.value("taskrun_database_connections_in_use") >= 1
    )


def create_waiting_for_its_write(
    pool: ThreadPoolExecutor, server: RunningServer, *, task_key: str
) -> Future[httpx.Response]:
    """Send a create while writes are held; return once it waits for the database."""
    response = pool.submit(
        httpx.post,
        f"{server.api_url}/task_runs/",
        json={"task_key": task_key, "dynamic_key": "0"},
        timeout=60,
    )
    wait_for(lambda: waits_for_the_database(server), "the create to wait for its write")
    return response


def refuses_connections(server: RunningServer) -> bool:
    """Whether a new connection is refused at once, rather than taken and left unanswered."""
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def answers(server: RunningServer) -> bool:
    """Whether the server answers a new request (on a new connection) within a second."""
    try:
        httpx.get(f"{server.api_url}/health", timeout=1)
    except httpx.TransportError:
        return False
    return True


def runs_with_key(database_url: str, task_key: str) -> int:
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as connection:
            return int(
                connection.scalar(select(func.count()).where(task_run.c.task_key == task_key)) or 0
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_in_flight_is_answered_before_a_clean_exit(
    backend: str, tmp_path: Path, workers: int
) -> None:
    with (
        empty_database(backend, tmp_path) as url,
        running_server(url, workers=workers) as server,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        with writes_held(url):
            slow = create_waiting_for_its_write(pool, server, task_key="slow")
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: not answers(server), "the server to stop accepting requests")
            wait_for(lambda: refuses_connections(server), "new connections to be refused")

            assert server.process.poll() is None, "exited with a request in flight"
            assert not slow.done()

        assert slow.result(timeout=WAIT_SECONDS).status_code == 201
        assert server.process.wait(timeout=WAIT_SECONDS) == 0
        if backend == "sqlite":
            # SQLite folds its write-ahead log into the database and deletes it when the
            # last connection closes; after a kill the log would stay.
            assert not Path(f"{make_url(url).database}-wal").exists()
        assert runs_with_key(url, "slow") == 1


# With one worker the server is the process that gives up; with more, the supervising
# process stops cleanly after its worker did.
EXIT_STATUS_AFTER_ABANDONING = {1: 1, 2: 0}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_past_the_grace_period_is_abandoned_and_undone(
    backend: str, tmp_path: Path, workers: int
) -> None:
    grace_seconds = 0.5
    with (
        empty_database(backend, tmp_path) as url,
        running_server(
            url, workers=workers, environment={"GRACEFUL_SHUTDOWN_SECONDS": str(grace_seconds)}
        ) as server,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        with writes_held(url):
            slow = create_waiting_for_its_write(pool, server, task_key="abandoned")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            # The process ends while the create still waits: it does not wait for it.
            exit_status = server.process.wait(timeout=WAIT_SECONDS)
            assert time.monotonic() - signalled < grace_seconds + 10
            assert slow.result(timeout=WAIT_SECONDS).status_code == 500

        assert exit_status == EXIT_STATUS_AFTER_ABANDONING[workers]
        assert runs_with_key(url, "abandoned") == 0

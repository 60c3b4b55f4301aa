"""`GET /metrics` of a real server with two worker processes: every worker is counted.

Traffic goes over a new connection per request, many at once, until both workers have
answered some of it; the counts scraped from either worker must add up to all that was sent.
A worker that is killed takes its live gauges with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.databases import empty_database, sqlite_database
from tests.support.faults import wait_for
from tests.support.metrics import CONCURRENCY, Request, Scrape, send_all
from tests.support.server import RunningServer, running_server

CREATE = "create_task_run_task_runs__post"
READ = "read_task_run_task_runs__id__get"
HEALTH = "health_check_health_get"
WORKERS_DEADLINE_SECONDS = 60
# Requests held in flight by bodies that never finish arriving.
HELD_REQUESTS = 6
# Websockets open at once, spread over the workers.
SOCKETS = 8


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prometheus")
    # A file an earlier server left behind, which must not count.
    (directory / "counter_1.db").write_bytes(b"left over from an earlier run")
    return directory


@pytest.fixture(scope="module")
def server(
    backend: str, tmp_path_factory: pytest.TempPathFactory, metrics_dir: Path
) -> Iterator[RunningServer]:
    with (
        empty_database(backend, tmp_path_factory.mktemp("metrics")) as url,
        running_server(
            url, workers=2, environment={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        ) as running,
    ):
        yield running


def counting_workers(metrics_dir: Path) -> set[str]:
    """The processes that have counted a request (each writes a file of its own)."""
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}


def test_the_counts_of_both_workers_add_up(server: RunningServer, metrics_dir: Path) -> None:
    before = Scrape.of(server).requests()
    sent: Counter[tuple[str, int]] = Counter()
    # The kernel decides which worker accepts a connection: health checks until both have
    # answered some (on a busy machine one worker can get all of a short burst).
    deadline = time.monotonic() + WORKERS_DEADLINE_SECONDS
    while len(counting_workers(metrics_dir)) < 2:
        assert time.monotonic() < deadline, f"only {counting_workers(metrics_dir)} answered"
        send_all(server, [("GET", "/health", None)] * CONCURRENCY * 2)
        sent[(HEALTH, 200)] += CONCURRENCY * 2
    creates: list[Request] = [
        ("POST", "/task_runs/", {"task_key": f"k{i}", "dynamic_key": "0"}) for i in range(40)
    ]
    send_all(server, creates)
    ids = [
        httpx.post(
            f"{server.api_url}/task_runs/", json={"task_key": f"k{i}", "dynamic_key": "0"}
        ).json()["id"]
        for i in range(10)
    ]
    traffic: list[Request] = [
        *[("GET", "/health", None)] * 60,
        *[("GET", f"/task_runs/{run_id}", None) for run_id in ids * 3],
        *[("GET", f"/task_runs/{uuid.uuid4()}", None)] * 20,
        *[("GET", "/no-such-path", None)] * 5,
    ]
    statuses = send_all(server, traffic)
    sent += Counter(
        {
            (CREATE, 201): 40,
            (CREATE, 200): 10,
            (HEALTH, 200): 60,
            (READ, 200): 30,
            (READ, 404): 20,
            ("none", 404): 5,
        }
    )

    counted = Scrape.of(server).requests()
    counted.subtract(before)
    assert +counted == sent
    assert Counter(statuses) == {200: 90, 404: 25}


def test_the_latency_histogram_counts_every_request(server: RunningServer) -> None:
    send_all(server, [("GET", "/health", None)] * 20)

    scrape = Scrape.of(server)

    for operation in (HEALTH, CREATE, READ):
        count = scrape.value("taskrun_http_request_duration_seconds_count", operation_id=operation)
        answered = scrape.value("taskrun_http_requests_total", operation_id=operation)
        slowest = scrape.value(
            "taskrun_http_request_duration_seconds_bucket", operation_id=operation, le="+Inf"
        )
        assert count == answered == slowest > 0, operation
        assert scrape.value("taskrun_http_request_duration_seconds_sum", operation_id=operation) > 0


def test_nothing_is_in_flight_or_checked_out_when_idle(server: RunningServer) -> None:
    send_all(server, [("GET", "/health", None)] * 5)

    scrape = Scrape.of(server)

    assert scrape.samples["taskrun_http_requests_in_flight"] == [({}, 0.0)]
    assert scrape.samples["taskrun_database_connections_in_use"] == [({}, 0.0)]


def test_the_scrape_itself_is_not_counted(server: RunningServer) -> None:
    before = Scrape.of(server).requests()

    after = Scrape.of(server).requests()

    assert after == before


def test_the_websockets_of_both_workers_add_up(server: RunningServer) -> None:
    events_in = server.api_url.replace("http://", "ws://") + "/events/in"
    before = Scrape.of(server)
    with ExitStack() as sockets:
        # Connections spread over the workers as requests do.
        opened = [sockets.enter_context(connect(events_in)) for _ in range(SOCKETS)]
        for socket_ in opened:
            socket_.send(json.dumps({**an_event(), "id": str(uuid.uuid4())}))

        def all_counted(scrape: Scrape) -> bool:
            open_sockets = scrape.value("taskrun_websockets_open", channel="/api/events/in")
            stored = scrape.value("taskrun_events_received_total", outcome="stored")
            stored_before = before.value("taskrun_events_received_total", outcome="stored")
            return open_sockets == SOCKETS and stored - stored_before == SOCKETS

        assert wait_for(lambda: all_counted(Scrape.of(server)), timeout=30)
        # Whichever worker answers a scrape, it counts the sockets of both.
        assert all(all_counted(Scrape.of(server)) for _ in range(6))
    assert wait_for(
        lambda: Scrape.of(server).value("taskrun_websockets_open", channel="/api/events/in") == 0,
        timeout=30,
    )


def an_event() -> dict[str, object]:
    return {
        "occurred": "2026-01-01T00:00:00Z",
        "event": "test.metrics",
        "resource": {"prefect.resource.id": "test.metrics"},
    }


def hold_request(port: int) -> socket.socket:
    """A connection whose request has begun and waits for the rest of its body."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        b"POST /api/task_runs/count HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{"
    )
    return connection


def in_flight(server: RunningServer) -> float:
    return Scrape.of(server).value("taskrun_http_requests_in_flight")


def test_a_killed_worker_leaves_nothing_in_flight(tmp_path: Path) -> None:
    # A directory of its own: the service deletes the `*.db` files it finds there.
    metrics_directory = tmp_path / "metrics"
    metrics_directory.mkdir()
    environment = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_directory),
        # The held requests wait for their bodies longer than the test takes.
        "REQUEST_BODY_TIMEOUT": "120",
    }
    with (
        sqlite_database(tmp_path) as url,
        running_server(url, workers=2, environment=environment) as server,
        ExitStack() as held,
    ):
        for _ in range(HELD_REQUESTS):
            held.enter_context(hold_request(server.port))
        assert wait_for(lambda: in_flight(server) == HELD_REQUESTS, timeout=10)
        killed = server.worker_pids()

        for pid in killed:
            os.kill(pid, signal.SIGKILL)

        replaced = wait_for(
            lambda: len(set(server.worker_pids()) - set(killed)) == 2,
            timeout=WORKERS_DEADLINE_SECONDS,
        )
        assert replaced, server.worker_pids()
        assert wait_for(lambda: in_flight(server) == 0, timeout=10), in_flight(server)

"""Prefect background tasks end to end: `Task.delay()` in one process, Prefect's task worker
in another, the service as real processes in between, on each database backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect

from app.db.notifications import RECONNECT_SECONDS
from tests.support.databases import empty_database
from tests.support.server import RunningServer, free_port, running_server

REPOSITORY = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_SECONDS = 120
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own for each test: every test counts its runs."""
    with empty_database(backend, tmp_path) as url:
        yield url


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """The result storage the delay side and the worker share."""
    path = tmp_path / "storage"
    path.mkdir()
    return path


def prefect_environment(server: RunningServer, storage: Path, home: Path) -> dict[str, str]:
    """A Prefect process's settings: the service's URL, its own home, the shared storage."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {
        **inherited,
        "PREFECT_API_URL": server.api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(storage),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }


def delay(server: RunningServer, storage: Path, home: Path, *arguments: str) -> dict[str, Any]:
    """Run the delay side to its end and return what it printed."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.compat.background.delay", *arguments],
        cwd=REPOSITORY,
        env=prefect_environment(server, storage, home),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return output


@contextmanager
def task_worker(server: RunningServer, storage: Path, home: Path) -> Iterator[None]:
    """Prefect's task worker serving the test tasks, for as long as the block lasts."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.compat.background.worker"],
        cwd=REPOSITORY,
        env=prefect_environment(server, storage, home),
    )
    try:
        yield
    finally:
        process.kill()
        process.wait()


def states(api_url: str, run_id: str) -> list[str]:
    response = httpx.get(f"{api_url}/task_run_states/", params={"task_run_id": run_id})
    return [state["name"] for state in response.json()]


def wait_until_final(api_url: str, run_ids: list[str]) -> dict[str, str]:
    """Each run's final state type, once every run has one."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
    with httpx.Client(base_url=api_url) as client:
        while True:
            types = {i: client.get(f"/task_runs/{i}").json()["state_type"] for i in run_ids}
            if all(state_type in FINAL for state_type in types.values()):
                return types
            assert time.monotonic() < deadline, f"not finished in time: {types}"
            time.sleep(0.2)


class TestBackgroundTasks:
    def test_results_failures_and_retries_come_back_to_the_delay_side(
        self, database_url: str, storage: Path, tmp_path: Path
    ) -> None:
        with (
            running_server(database_url) as server,
            task_worker(server, storage, tmp_path / "worker"),
        ):
            output = delay(server, storage, tmp_path / "delay", "life")
            histories = {name: states(server.api_url, i) for name, i in output["ids"].items()}

        assert output["add"] == 3
        assert output["fail"] == "ValueError: fail failed for 7"
        assert output["flaky"] == "succeeded on the retry"
        # A task with tags runs once its engine has the tags' concurrency slots.
        assert (output["tagged"], output["tagged_here"]) == (5, 9)
        assert histories == {
            "add": ["Scheduled", "Pending", "Running", "Completed"],
            "fail": ["Scheduled", "Pending", "Running", "Failed"],
            "flaky": ["Scheduled", "Pending", "Running", "AwaitingRetry", "Retrying", "Completed"],
            "tagged": ["Scheduled", "Pending", "Running", "Completed"],
        }

    def test_runs_delayed_before_any_worker_runs_are_delivered_when_one_starts(
        self, database_url: str, storage: Path, tmp_path: Path
    ) -> None:
        with running_server(database_url) as server:
            run_ids = delay(server, storage, tmp_path / "delay", "add", "5")["ids"]
            waiting = wait_for_types(server.api_url, run_ids)
            with task_worker(server, storage, tmp_path / "worker"):
                finished = wait_until_final(server.api_url, run_ids)

        assert waiting == {"SCHEDULED"}
        assert set(finished.values()) == {"COMPLETED"}

    def test_runs_delayed_before_a_restart_of_the_service_still_run(
        self, database_url: str, storage: Path, tmp_path: Path
    ) -> None:
        # The worker runs each task with the delay side's settings, its URL included.
        port = free_port()
        with running_server(database_url, port=port) as before:
            run_ids = delay(before, storage, tmp_path / "delay", "add", "3")["ids"]
        with (
            running_server(database_url, port=port) as after,
            task_worker(after, storage, tmp_path / "worker"),
        ):
            finished = wait_until_final(after.api_url, run_ids)

        assert set(finished.values()) == {"COMPLETED"}

    def test_a_run_whose_worker_died_before_the_ack_goes_to_another_worker(
        self, database_url: str, storage: Path, tmp_path: Path
    ) -> None:
        with running_server(database_url) as server:
            (run_id,) = delay(server, storage, tmp_path / "delay", "add", "1")["ids"]
            received = receive_and_die(server)
            with task_worker(server, storage, tmp_path / "worker"):
                finished = wait_until_final(server.api_url, [run_id])
            history = states(server.api_url, run_id)

        assert received == run_id
        assert finished == {run_id: "COMPLETED"}
        assert history == ["Scheduled", "Pending", "Running", "Completed"]


def wait_for_types(api_url: str, run_ids: list[str]) -> set[str]:
    """The runs' state types after a second with no worker."""
    time.sleep(1)
    return {httpx.get(f"{api_url}/task_runs/{i}").json()["state_type"] for i in run_ids}


def receive_and_die(server: RunningServer) -> str:
    """A worker that takes one run and is killed before it acknowledges it: the run's id."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.compat.background.raw_subscriber", server.api_url],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            return process.stdout.readline().strip()
        finally:
            process.kill()


# --- Several service processes on one PostgreSQL -----------------------------------------

RUNS = 200
SUBSCRIBERS_PER_SERVICE = 3


@pytest.mark.postgresql
def test_two_service_processes_deliver_each_run_exactly_once(
    backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("several service processes share PostgreSQL, not an SQLite file")
    task_key = f"exactly-once-{uuid.uuid4().hex[:8]}"
    with running_server(database_url) as first, running_server(database_url) as second:
        create_deferred_runs(first.api_url, task_key, RUNS)
        received = asyncio.run(
            receive_all([first.api_url, second.api_url], task_key, expected=RUNS)
        )

    counts = Counter(received)
    assert len(counts) == RUNS
    assert set(counts.values()) == {1}


def create_deferred_runs(api_url: str, task_key: str, count: int) -> None:
    with httpx.Client(base_url=api_url) as client:
        for number in range(count):
            body = {
                "task_key": task_key,
                "dynamic_key": str(number),
                "state": {"type": "SCHEDULED", "state_details": {"deferred": True}},
            }
            assert client.post("/task_runs/", json=body).status_code == 201


async def receive_all(api_urls: list[str], task_key: str, *, expected: int) -> list[str]:
    """Every run delivered to subscribers of every service process, until `expected` came."""
    received: list[str] = []
    done = asyncio.Event()

    async def subscriber(api_url: str, number: int) -> None:
        url = api_url.replace("http", "ws", 1) + "/task_runs/subscriptions/scheduled"
        async with connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": None}))
            await socket.recv()
            subscribe = {"type": "subscribe", "keys": [task_key], "client_id": f"w{number}"}
            await socket.send(json.dumps(subscribe))
            while not done.is_set():
                try:
                    frame = await asyncio.wait_for(socket.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                received.append(json.loads(frame)["id"])
                await socket.send(json.dumps({"type": "ack"}))
                if len(received) >= expected:
                    done.set()

    subscribers = [
        subscriber(api_url, number)
        for api_url in api_urls
        for number in range(SUBSCRIBERS_PER_SERVICE)
    ]
    await asyncio.wait_for(asyncio.gather(*subscribers), timeout=PROCESS_TIMEOUT_SECONDS)
    return received


# --- Several service processes on one database -------------------------------------------

# A run or an event that reaches one process wakes the sockets of the other at once: in
# lock-step (the next one sent as soon as the last arrived), waiting for the other process's
# poll instead would take about the poll's interval (0.5 s for runs, 0.25 s for events) each.
LOCK_STEP_ROUNDS = 8
AT_ONCE_SECONDS = 0.1


@contextmanager
def two_processes(database_url: str) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two service processes, each a server of its own, on one database."""
    with (
        running_server(database_url, workers=1) as first,
        running_server(database_url, workers=1) as second,
    ):
        yield first, second


def assert_at_once(waits: list[float]) -> None:
    """The median wait is well under the other process's poll interval."""
    assert sorted(waits)[len(waits) // 2] < AT_ONCE_SECONDS, waits


def test_a_run_created_through_one_process_reaches_a_worker_of_another_at_once(
    database_url: str,
) -> None:
    with two_processes(database_url) as (first, second):
        waits = asyncio.run(delivery_waits(create_on=first.api_url, worker_on=second.api_url))

    assert_at_once(waits)


async def delivery_waits(*, create_on: str, worker_on: str) -> list[float]:
    """Seconds from each create (through one process) to its delivery (by the other)."""
    task_key = f"at-once-{uuid.uuid4().hex[:8]}"
    waits: list[float] = []
    url = worker_on.replace("http", "ws", 1) + "/task_runs/subscriptions/scheduled"
    async with (
        connect(url, subprotocols=["prefect"]) as socket,  # type: ignore[list-item]
        httpx.AsyncClient(base_url=create_on) as client,
    ):
        await socket.send(json.dumps({"type": "auth", "token": None}))
        await socket.recv()
        await socket.send(json.dumps({"type": "subscribe", "keys": [task_key], "client_id": "w"}))
        for number in range(LOCK_STEP_ROUNDS):
            body = {
                "task_key": task_key,
                "dynamic_key": str(number),
                "state": {"type": "SCHEDULED", "state_details": {"deferred": True}},
            }
            created = time.monotonic()
            assert (await client.post("/task_runs/", json=body)).status_code == 201
            await asyncio.wait_for(socket.recv(), timeout=PROCESS_TIMEOUT_SECONDS)
            waits.append(time.monotonic() - created)
            await socket.send(json.dumps({"type": "ack"}))
    return waits


@pytest.mark.postgresql
def test_a_process_whose_listening_connection_was_cut_is_woken_at_once_again(
    backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("only PostgreSQL wakes processes through a connection")
    with two_processes(database_url) as (first, second):
        cut_listening_connections(database_url)
        time.sleep(2 * RECONNECT_SECONDS)
        waits = asyncio.run(delivery_waits(create_on=first.api_url, worker_on=second.api_url))

    assert_at_once(waits)


def cut_listening_connections(database_url: str) -> None:
    """End the PostgreSQL sessions that listen for notifications, as a restart would."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        ).fetchall()
    assert len(ended) >= 2, "each service process listens on a connection of its own"


def test_an_event_sent_to_one_process_reaches_a_follower_of_another_at_once(
    database_url: str,
) -> None:
    with two_processes(database_url) as (first, second):
        waits = asyncio.run(event_waits(send_to=first.api_url, follow_on=second.api_url))

    assert_at_once(waits)


async def event_waits(*, send_to: str, follow_on: str) -> list[float]:
    """Seconds from each event sent (to one process) to its arrival (from the other)."""
    waits: list[float] = []
    events_in = send_to.replace("http", "ws", 1) + "/events/in"
    events_out = follow_on.replace("http", "ws", 1) + "/events/out"
    async with (
        connect(events_in, subprotocols=["prefect"]) as sender,  # type: ignore[list-item]
        connect(events_out, subprotocols=["prefect"]) as follower,  # type: ignore[list-item]
    ):
        for socket in (sender, follower):
            await socket.send(json.dumps({"type": "auth", "token": None}))
            await socket.recv()
        name = f"test.at-once.{uuid.uuid4().hex[:8]}"
        await follower.send(json.dumps({"type": "filter", "filter": {"event": {"name": [name]}}}))
        for _ in range(LOCK_STEP_ROUNDS):
            event = {
                "occurred": datetime.now(UTC).isoformat(),
                "event": name,
                "resource": {"prefect.resource.id": "test.resource"},
                "id": str(uuid.uuid4()),
            }
            sent = time.monotonic()
            await sender.send(json.dumps(event))
            frame = json.loads(await asyncio.wait_for(follower.recv(), PROCESS_TIMEOUT_SECONDS))
            waits.append(time.monotonic() - sent)
            assert frame["event"]["id"] == event["id"]
    return waits


def test_a_stopping_service_closes_a_workers_socket_so_that_it_reconnects(
    database_url: str,
) -> None:
    """1000 or 1001 would make Prefect's task worker stop for good."""
    with running_server(database_url, workers=1) as server:
        code = asyncio.run(close_code_when_stopped(server))

    assert code == 1012


async def close_code_when_stopped(server: RunningServer) -> int | None:
    url = server.api_url.replace("http", "ws", 1) + "/task_runs/subscriptions/scheduled"
    async with connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
        await socket.send(json.dumps({"type": "auth", "token": None}))
        await socket.recv()
        await socket.send(json.dumps({"type": "subscribe", "keys": ["k"], "client_id": "w"}))
        server.process.terminate()
        await socket.wait_closed()
        return socket.close_code

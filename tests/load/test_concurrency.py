"""Concurrency against a real server process: identical creates make one run, and proposals
for one run are decided one at a time (none lost, the history in order).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db.database import Database
from app.db.tables import task_run
from tests.support.databases import empty_database
from tests.support.server import RunningServer, running_server

CONCURRENT_REQUESTS = 64
ROUNDS = 3


@pytest.fixture(scope="module")
def served_database(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    """A server with two worker processes over a database of its own."""
    with (
        empty_database(backend, tmp_path_factory.mktemp("served")) as url,
        running_server(url, workers=2) as server,
    ):
        yield server, url


def create_all_at_once(api_url: str, body: dict[str, Any]) -> list[httpx.Response]:
    """Send CONCURRENT_REQUESTS identical creates, released together."""
    barrier = threading.Barrier(CONCURRENT_REQUESTS)
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    with httpx.Client(base_url=api_url, limits=limits, timeout=60) as client:

        def send(_: int) -> httpx.Response:
            barrier.wait()
            return client.post("/task_runs/", json=body)

        with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
            return list(pool.map(send, range(CONCURRENT_REQUESTS)))


def rows_with_key(database_url: str, task_key: str) -> int:
    database = Database(database_url)
    try:
        with database.snapshot() as connection:
            query = select(func.count()).where(task_run.c.task_key == task_key)
            return int(connection.scalar(query) or 0)
    finally:
        database.dispose()


@pytest.mark.parametrize("with_flow_run", [True, False], ids=["flow-run", "no-flow-run"])
@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_identical_creates_make_one_run(
    served_database: tuple[RunningServer, str], with_flow_run: bool, round_number: int
) -> None:
    server, database_url = served_database
    task_key = f"race-{round_number}-{uuid.uuid4().hex[:8]}"
    body = {
        "task_key": task_key,
        "dynamic_key": "0",
        "flow_run_id": str(uuid.uuid4()) if with_flow_run else None,
    }

    responses = create_all_at_once(server.api_url, body)

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: CONCURRENT_REQUESTS - 1}, statuses
    assert len({response.json()["id"] for response in responses}) == 1
    assert rows_with_key(database_url, task_key) == 1


# --- Proposals for one run, decided one at a time ------------------------------------------

CONCURRENT_PROPOSALS = 16


def propose_all_at_once(api_url: str, run_id: str, state: dict[str, Any]) -> list[httpx.Response]:
    """Send CONCURRENT_PROPOSALS identical set_state requests for one run, released together."""
    barrier = threading.Barrier(CONCURRENT_PROPOSALS)
    limits = httpx.Limits(max_connections=CONCURRENT_PROPOSALS)
    with httpx.Client(base_url=api_url, limits=limits, timeout=60) as client:

        def send(_: int) -> httpx.Response:
            barrier.wait()
            return client.post(f"/task_runs/{run_id}/set_state", json={"state": state})

        with ThreadPoolExecutor(max_workers=CONCURRENT_PROPOSALS) as pool:
            return list(pool.map(send, range(CONCURRENT_PROPOSALS)))


def new_run(api_url: str, *states: str) -> str:
    """A new run taken through `states`; returns its id."""
    with httpx.Client(base_url=api_url, timeout=60) as client:
        body = {"task_key": f"proposals-{uuid.uuid4().hex[:8]}", "dynamic_key": "0"}
        run_id: str = client.post("/task_runs/", json=body).json()["id"]
        for state_type in states:
            response = client.post(
                f"/task_runs/{run_id}/set_state", json={"state": {"type": state_type}}
            )
            assert response.status_code == 201, response.text
    return run_id


def run_and_states(api_url: str, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with httpx.Client(base_url=api_url, timeout=60) as client:
        run = client.get(f"/task_runs/{run_id}").json()
        states = client.get("/task_run_states/", params={"task_run_id": run_id}).json()
    return run, states


def test_concurrent_running_proposals_are_all_counted(
    served_database: tuple[RunningServer, str],
) -> None:
    server, _ = served_database
    run_id = new_run(server.api_url)

    responses = propose_all_at_once(server.api_url, run_id, {"type": "RUNNING"})

    assert [(r.status_code, r.json()["status"]) for r in responses] == [
        (201, "ACCEPT")
    ] * CONCURRENT_PROPOSALS
    run, states = run_and_states(server.api_url, run_id)
    assert run["run_count"] == CONCURRENT_PROPOSALS
    assert len(states) == CONCURRENT_PROPOSALS + 1
    # The current state is the newest of the history, and each state follows the one before.
    assert run["state_id"] == states[-1]["id"]
    assert [s["name"] for s in states[1:]] == ["Running"] + ["Rerunning"] * (
        CONCURRENT_PROPOSALS - 1
    )
    timestamps = [s["timestamp"] for s in states]
    assert timestamps == sorted(set(timestamps))


def test_concurrent_completions_with_a_result_complete_the_run_once(
    served_database: tuple[RunningServer, str],
) -> None:
    server, _ = served_database
    run_id = new_run(server.api_url, "RUNNING")
    completed = {"type": "COMPLETED", "data": {"storage_key": "result"}}

    responses = propose_all_at_once(server.api_url, run_id, completed)

    outcomes = Counter((r.status_code, r.json()["status"]) for r in responses)
    assert outcomes == {(201, "ACCEPT"): 1, (200, "REJECT"): CONCURRENT_PROPOSALS - 1}
    reasons = {r.json()["details"].get("reason") for r in responses if r.status_code == 200}
    assert reasons == {"This run is already completed."}
    run, states = run_and_states(server.api_url, run_id)
    assert [s["type"] for s in states] == ["PENDING", "RUNNING", "COMPLETED"]
    assert run["state_id"] == states[-1]["id"]


@pytest.mark.postgresql
def test_a_locked_run_does_not_hold_up_another_runs_proposals(
    backend: str, served_database: tuple[RunningServer, str]
) -> None:
    """On PostgreSQL each proposal locks its own run's row only."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time by design")
    server, database_url = served_database
    held, free = new_run(server.api_url), new_run(server.api_url)
    database = Database(database_url)
    try:
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            httpx.Client(base_url=server.api_url, timeout=60) as client,
        ):
            with database.transaction() as connection:
                lock = select(task_run.c.id).where(task_run.c.id == held).with_for_update()
                connection.execute(lock)
                waiting = pool.submit(
                    client.post, f"/task_runs/{held}/set_state", json={"state": {"type": "RUNNING"}}
                )
                other = client.post(
                    f"/task_runs/{free}/set_state", json={"state": {"type": "RUNNING"}}
                )

                assert other.status_code == 201
                assert not waiting.done()
            # The lock went with the transaction: the held proposal goes through.
            assert waiting.result(timeout=60).status_code == 201
    finally:
        database.dispose()

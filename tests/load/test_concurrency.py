"""Concurrent identical creates against a real server process: one row, one 201, the rest 200."""

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

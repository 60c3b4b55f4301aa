"""Durability: every create the service acknowledged survives a kill -9 of the whole service."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import empty_database
from tests.support.server import start_server, stop_server

LOAD_SECONDS = 2.0
THREADS = 8
# The kill comes after LOAD_SECONDS and this many acknowledged creates (on a busy machine
# the creates come slower), or after MAX_LOAD_SECONDS.
MIN_ACKNOWLEDGED = 50
MAX_LOAD_SECONDS = 30.0


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with empty_database(backend, tmp_path) as url:
        yield url


class TestKilledService:
    def test_every_acknowledged_create_is_read_back_after_a_kill_9(self, database_url: str) -> None:
        server = start_server(database_url, workers=2)
        acknowledged: list[str] = []
        stopping = threading.Event()

        def create_until_killed() -> None:
            with httpx.Client(base_url=server.api_url, timeout=10) as client:
                while not stopping.is_set():
                    body = {"task_key": f"durable-{uuid.uuid4().hex}", "dynamic_key": "0"}
                    try:
                        response = client.post("/task_runs/", json=body)
                    except httpx.TransportError:
                        continue  # in flight when the service died: never acknowledged
                    if response.status_code == 201:
                        acknowledged.append(response.json()["id"])

        threads = [threading.Thread(target=create_until_killed) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(LOAD_SECONDS)
            give_up = time.monotonic() + MAX_LOAD_SECONDS
            while len(acknowledged) <= MIN_ACKNOWLEDGED and time.monotonic() < give_up:
                time.sleep(0.1)
            server.kill_all()
        finally:
            stopping.set()
            for thread in threads:
                thread.join()
            stop_server(server)

        restarted = start_server(database_url, workers=2)
        try:
            with httpx.Client(base_url=restarted.api_url, timeout=30) as client:
                lost = [
                    run_id
                    for run_id in acknowledged
                    if client.get(f"/task_runs/{run_id}").status_code != 200
                ]
        finally:
            stop_server(restarted)

        assert len(acknowledged) > MIN_ACKNOWLEDGED
        assert lost == []

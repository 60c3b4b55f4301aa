"""A fresh SQLite file is in WAL mode before any worker starts: no first request is a 503."""

from __future__ import annotations

import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.server import running_server

STARTS = 20
FIRST_REQUESTS = 16


def first_requests(api_url: str) -> list[int]:
    """Creates and reads sent at once, each on a connection of its own (both workers)."""

    def one(number: int) -> int:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            if number % 2:
                return client.get(f"/task_runs/{uuid.uuid4()}").status_code
            body = {"task_key": f"first-{number}", "dynamic_key": "0"}
            return client.post("/task_runs/", json=body).status_code

    with ThreadPoolExecutor(max_workers=FIRST_REQUESTS) as pool:
        return list(pool.map(one, range(FIRST_REQUESTS)))


class TestFreshStart:
    def test_two_workers_on_a_fresh_file_answer_their_first_requests(self, tmp_path: Path) -> None:
        statuses: list[int] = []
        modes = []
        for start in range(STARTS):
            database = tmp_path / f"fresh-{start}.db"
            with running_server(f"sqlite:///{database}", workers=2) as server:
                statuses += first_requests(server.api_url)
            modes.append(sqlite3.connect(database).execute("PRAGMA journal_mode").fetchone()[0])

        assert sorted(set(statuses)) == [201, 404]
        assert statuses.count(201) == STARTS * FIRST_REQUESTS // 2
        assert modes == ["wal"] * STARTS

"""A fresh SQLite file is in WAL mode before any worker starts: no first request is a 503."""

from __future__ import annotations

import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.server import running_server

STARTS = 8
PARALLEL_STARTS = 4
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


def start_fresh(database: Path) -> tuple[list[int], str]:
    """Serve a new file with two workers; the statuses of their first requests, and the
    file's journal mode afterwards.
    """
    with running_server(f"sqlite:///{database}", workers=2) as server:
        statuses = first_requests(server.api_url)
    mode: str = sqlite3.connect(database).execute("PRAGMA journal_mode").fetchone()[0]
    return statuses, mode


class TestFreshStart:
    def test_two_workers_on_a_fresh_file_answer_their_first_requests(self, tmp_path: Path) -> None:
        # A few services at a time: a start mostly waits, for imports and for shutdown.
        files = [tmp_path / f"fresh-{number}.db" for number in range(STARTS)]
        with ThreadPoolExecutor(max_workers=PARALLEL_STARTS) as pool:
            starts = list(pool.map(start_fresh, files))

        statuses = [status for answers, _ in starts for status in answers]
        assert sorted(set(statuses)) == [201, 404]
        assert statuses.count(201) == STARTS * FIRST_REQUESTS // 2
        assert [mode for _, mode in starts] == ["wal"] * STARTS

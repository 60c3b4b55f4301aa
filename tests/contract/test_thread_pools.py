"""Reads and writes run on separate threads: a read never waits for a write's turn."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from app.db.migrate import upgrade
from app.main import create_app, database_of
from app.settings import Settings
from tests.support.locks import hold_in_another_process

HOLD_SECONDS = 3.0


def test_a_read_is_answered_while_every_write_thread_waits(tmp_path: Path) -> None:
    database_path = tmp_path / "taskrun.db"
    url = f"sqlite:///{database_path}"
    upgrade(url)
    app = create_app(Settings(database_url=url, threads_per_worker=1, read_threads_per_worker=1))
    holder = hold_in_another_process(Path(f"{database_path}-write.lock"), HOLD_SECONDS)
    write_statuses: list[int] = []
    with app.test_client() as client:
        body = {"task_key": "k", "dynamic_key": "0"}
        write = threading.Thread(
            target=lambda: write_statuses.append(
                client.post("/api/task_runs/", json=body).status_code
            )
        )
        write.start()
        time.sleep(0.3)  # the write has its thread, and waits for its turn

        started = time.monotonic()
        read = client.get("/api/health")
        read_seconds = time.monotonic() - started

        assert write_statuses == []  # still waiting
        write.join()
    holder.communicate()
    database_of(app).dispose()

    assert read.status_code == 200
    assert read_seconds < HOLD_SECONDS / 2
    assert write_statuses == [201]

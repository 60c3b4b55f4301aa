"""The run a proposal changes is read as the last writer left it, state included, even when the
read waited for that writer's transaction (PostgreSQL locks the run's row).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.db import task_runs as run_rows
from app.db.database import Database
from app.db.task_runs import StoredTaskRun
from app.services.task_run_states import set_task_run_state
from generated import models
from tests.support.databases import created_run

WAIT_SECONDS = 0.5


def new_run(database: Database) -> StoredTaskRun:
    run = created_run(database)
    with database.snapshot() as connection:
        stored = run_rows.find_task_run(connection, run.id)
    assert stored is not None
    assert stored.state is not None
    return stored


def test_an_unchanged_run_is_read_with_its_current_state(database: Database) -> None:
    created = new_run(database)

    with database.transaction() as connection:
        stored = run_rows.find_task_run_to_change(connection, created.run.id)

    assert stored == created


def test_an_unknown_run_is_not_found(database: Database) -> None:
    created = new_run(database)
    with database.transaction() as connection:
        run_rows.delete_task_run(connection, created.run.id)

    with database.transaction() as connection:
        assert run_rows.find_task_run_to_change(connection, created.run.id) is None


@pytest.mark.postgresql
def test_a_read_that_waited_for_the_lock_sees_the_state_written_meanwhile(
    backend: str, database: Database
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite's writers take turns: a read never waits inside its transaction")
    created = new_run(database)
    running = models.StateCreate(type=models.StateType.RUNNING)

    def read_to_change() -> StoredTaskRun | None:
        with database.transaction() as connection:
            return run_rows.find_task_run_to_change(connection, created.run.id)

    with ThreadPoolExecutor(max_workers=1) as pool, database.transaction() as connection:
        written = set_task_run_state(
            connection=connection, task_run_id=created.run.id, proposed=running, force=False
        )
        waiting = pool.submit(read_to_change)
        time.sleep(WAIT_SECONDS)
        # The read started before the change was committed, and waits for the run's row.
        assert not waiting.done()
    stored = waiting.result(timeout=30)

    assert written.state is not None
    assert stored is not None
    assert stored.state is not None
    assert stored.run.state_id == written.state.id
    assert stored.state.id == written.state.id
    assert stored.state.type == "RUNNING"
    assert stored.run.run_count == 1

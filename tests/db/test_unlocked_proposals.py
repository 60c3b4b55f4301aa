"""A proposal decided on a read that took no lock is written only if the run's state is still
the one read; on PostgreSQL it is decided again when another writer came first, and made in a
transaction that locks the run when that keeps happening.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import pytest

from app.db import task_runs as run_rows
from app.db.database import Database
from app.db.task_runs import StoredTaskRun
from app.services import task_run_states
from app.services.clock import utcnow
from app.services.errors import NotFound
from app.services.states import enter_state, new_state_row, next_state_time
from generated import models
from tests.support.databases import created_run

RUNNING = models.StateCreate(type=models.StateType.RUNNING)


def history(database: Database, run_id: UUID) -> list[tuple[str, str]]:
    with database.snapshot() as connection:
        states = task_run_states.read_task_run_states(connection=connection, task_run_id=run_id)
    return [(state.type.value, state.name or "") for state in states]


def stored_run(database: Database, run_id: UUID) -> StoredTaskRun:
    with database.snapshot() as connection:
        stored = run_rows.find_task_run(connection, run_id)
    assert stored is not None
    return stored


def propose_running(database: Database, run_id: UUID) -> task_run_states.SetStateOutcome:
    return task_run_states.propose_state(
        database, task_run_id=run_id, proposed=RUNNING, force=False
    )


def write_decided_state(database: Database, stored: StoredTaskRun) -> bool:
    """Write a RUNNING state for the run as `stored` read it; whether it was written."""
    run, current = stored
    fields = run_rows.state_fields(run)
    state = new_state_row(
        task_run=run, proposed=RUNNING, now=next_state_time(current, now=utcnow())
    )
    enter_state(run, state)
    with database.transaction() as connection:
        return run_rows.write_current_state(connection, run, state, stored=fields)


def test_a_state_is_written_when_the_run_is_as_read(database: Database) -> None:
    run = created_run(database)

    assert write_decided_state(database, stored_run(database, run.id))

    assert history(database, run.id) == [("PENDING", "Pending"), ("RUNNING", "Running")]
    assert stored_run(database, run.id).run.state_type == "RUNNING"


def test_nothing_is_written_when_the_runs_state_changed_since_it_was_read(
    database: Database,
) -> None:
    run = created_run(database)
    read_before = stored_run(database, run.id)
    propose_running(database, run.id)

    assert not write_decided_state(database, read_before)

    assert history(database, run.id) == [("PENDING", "Pending"), ("RUNNING", "Running")]
    after = stored_run(database, run.id)
    assert after.state is not None
    assert after.run.state_id == after.state.id
    assert after.run.run_count == 1


def interfering(database: Database, monkeypatch: pytest.MonkeyPatch, *, times: int) -> list[UUID]:
    """Make the first `times` reads of a proposal without a lock each followed by another
    writer's RUNNING proposal for the same run, committed before the read one can write.
    Returns the ids of the runs read that way, one per read.
    """
    read = run_rows.find_task_run
    reads: list[UUID] = []

    def read_then_another_writer(connection: object, task_run_id: UUID) -> StoredTaskRun | None:
        stored = read(connection, task_run_id)  # type: ignore[arg-type]
        reads.append(task_run_id)
        if len(reads) <= times:
            database.write(write_running(task_run_id))
        return stored

    monkeypatch.setattr(run_rows, "find_task_run", read_then_another_writer)
    return reads


def write_running(task_run_id: UUID) -> Callable[..., task_run_states.SetStateOutcome]:
    return lambda connection: task_run_states.set_task_run_state(
        connection=connection, task_run_id=task_run_id, proposed=RUNNING, force=False
    )


@pytest.mark.postgresql
class TestWithoutALock:
    """PostgreSQL only: SQLite's proposals are made in its writer's turn."""

    @pytest.fixture(autouse=True)
    def postgresql_only(self, backend: str) -> None:
        if backend != "postgresql":
            pytest.skip("SQLite's proposals are made in its writer's turn, never without a lock")

    def test_a_proposal_overtaken_by_another_writer_is_decided_again(
        self, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = created_run(database)
        reads = interfering(database, monkeypatch, times=1)

        outcome = propose_running(database, run.id)

        assert len(reads) == 2
        assert outcome.written
        assert outcome.state is not None
        # Decided against the other writer's RUNNING state: a rerun, counted as the second run.
        assert outcome.state.name == "Rerunning"
        assert history(database, run.id) == [
            ("PENDING", "Pending"),
            ("RUNNING", "Running"),
            ("RUNNING", "Rerunning"),
        ]
        after = stored_run(database, run.id)
        assert after.run.state_id == outcome.state.id
        assert after.run.run_count == 2

    def test_a_proposal_overtaken_every_time_is_made_with_the_run_locked(
        self, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = created_run(database)
        reads = interfering(database, monkeypatch, times=task_run_states.UNLOCKED_ATTEMPTS)

        outcome = propose_running(database, run.id)

        # Every unlocked attempt lost; the locking transaction does not read through it.
        assert len(reads) == task_run_states.UNLOCKED_ATTEMPTS
        assert outcome.written
        expected_runs = task_run_states.UNLOCKED_ATTEMPTS + 1
        assert [state_type for state_type, _ in history(database, run.id)] == [
            "PENDING",
            *["RUNNING"] * expected_runs,
        ]
        assert stored_run(database, run.id).run.run_count == expected_runs

    def test_a_proposal_of_an_unknown_run_is_not_found_without_a_lock(
        self, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        reads = interfering(database, monkeypatch, times=0)

        with pytest.raises(NotFound):
            propose_running(database, UUID(int=7))

        assert len(reads) == 1

"""Statements run on the driver's cursor read and write exactly what SQLAlchemy would, inside
SQLAlchemy's transaction, and fail with SQLAlchemy's errors.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy import bindparam, literal, select
from sqlalchemy.exc import IntegrityError

from app.db import task_run_states as state_rows
from app.db import task_runs as run_rows
from app.db.database import Database
from app.db.driver_statements import DriverStatement
from app.db.records import TaskRunStateRecord
from app.db.tables import task_run, task_run_state, task_run_tag
from app.services.ids import uuid7
from app.services.task_run_states import set_task_run_state
from generated import models
from tests.support.databases import created_run


class Rollback(Exception):
    """Ends a transaction block without committing it."""


def test_a_run_and_its_state_read_as_sqlalchemy_reads_them(database: Database) -> None:
    run = created_run(
        database,
        name="a run",
        tags=["a", "b"],
        labels={"x": 1},
        cache_key="key",
        cache_expiration=(datetime.now(UTC) + timedelta(days=1)).isoformat(),
        empirical_policy={"retries": 2, "retry_delay": [1, 2]},
        state={"type": "SCHEDULED", "state_details": {"scheduled_time": "2030-01-01T00:00:00Z"}},
    )
    database.write(
        lambda connection: set_task_run_state(
            connection=connection,
            task_run_id=run.id,
            proposed=models.StateCreate(type=models.StateType.RUNNING, data={"n": [1, None]}),
            force=True,
        )
    )

    with database.snapshot() as connection:
        on_the_driver = run_rows.find_task_run(connection, run.id)
        query = run_rows._WITH_CURRENT_STATE.where(task_run.c.id == run.id)
        row = connection.execute(query).first()

    assert row is not None
    assert on_the_driver == run_rows.stored_task_run(row)
    assert on_the_driver is not None
    assert on_the_driver.state is not None
    assert on_the_driver.state.data == {"n": [1, None]}
    assert on_the_driver.run.expected_start_time == datetime(2030, 1, 1, tzinfo=UTC)


def test_written_rows_read_back_through_sqlalchemy(database: Database) -> None:
    run = created_run(database, state={"type": "RUNNING", "message": "m"})

    with database.snapshot() as connection:
        state = connection.execute(
            select(task_run_state).where(task_run_state.c.task_run_id == run.id)
        ).one()
        stored = connection.execute(select(task_run).where(task_run.c.id == run.id)).one()

    assert run.state is not None
    assert state.id == run.state.id
    assert state.timestamp == run.state.timestamp
    assert state.message == "m"
    assert stored.state_id == run.state.id
    assert stored.start_time == run.start_time


def test_the_first_statement_begins_sqlalchemys_transaction(database: Database) -> None:
    """Committed with the block's transaction, and rolled back with it."""
    run = created_run(database)
    kept, undone = _state_rows_like(database, run.id, count=2)

    with database.transaction() as connection:
        state_rows.insert_state(connection, kept)
    with pytest.raises(Rollback):
        _insert_then_fail(database, undone)

    with database.snapshot() as connection:
        assert state_rows.find_state(connection, kept.id) == kept
        assert state_rows.find_state(connection, undone.id) is None


def test_a_driver_error_is_raised_as_sqlalchemys(database: Database) -> None:
    run = created_run(database)
    assert run.state is not None
    with database.snapshot() as connection:
        existing = state_rows.find_state(connection, run.state.id)
    assert existing is not None

    with pytest.raises(IntegrityError) as raised, database.transaction() as connection:
        state_rows.insert_state(connection, existing)

    assert isinstance(raised.value.orig, database.engine.dialect.loaded_dbapi.Error)
    # The parameters stay out of the message, as the engine's own errors keep them.
    assert str(run.id.hex) not in str(raised.value)
    assert str(run.id) not in str(raised.value)


def test_many_parameter_sets_write_a_row_each(database: Database) -> None:
    run = created_run(database)
    rows = [{"task_run_id": run.id, "tag": tag} for tag in ["b", "a", "c"]]

    with database.transaction() as connection:
        run_rows._INSERT_TAG.execute_many(connection, rows)

    with database.snapshot() as connection:
        tags = connection.execute(
            select(task_run_tag.c.tag).where(task_run_tag.c.task_run_id == run.id)
        ).scalars()
        assert sorted(tags) == ["a", "b", "c"]


def test_a_driver_error_of_many_parameter_sets_is_raised_as_sqlalchemys(
    database: Database,
) -> None:
    run = created_run(database, tags=["a"])
    rows = [{"task_run_id": run.id, "tag": "b"}, {"task_run_id": run.id, "tag": "a"}]

    with pytest.raises(IntegrityError), database.transaction() as connection:
        run_rows._INSERT_TAG.execute_many(connection, rows)

    with database.snapshot() as connection:
        tags = connection.execute(
            select(task_run_tag.c.tag).where(task_run_tag.c.task_run_id == run.id)
        ).scalars()
        assert list(tags) == ["a"]


def test_literals_of_the_statement_are_sent_with_the_parameters(database: Database) -> None:
    statement = DriverStatement(
        select(literal(41) + bindparam("n"), literal("x").label("s")).where(literal(True))
    )

    with database.snapshot() as connection:
        assert statement.first(connection, {"n": 1}) == (42, "x")


def test_a_parameter_rendered_per_execution_is_refused(database: Database) -> None:
    statement = DriverStatement(select(task_run.c.id).where(task_run.c.id.in_(bindparam("ids"))))

    with database.snapshot() as connection, pytest.raises(ValueError, match="'ids'"):
        statement.first(connection, {"ids": []})


def _insert_then_fail(database: Database, state: TaskRunStateRecord) -> None:
    with database.transaction() as connection:
        state_rows.insert_state(connection, state)
        raise Rollback


def _state_rows_like(database: Database, run_id: UUID, *, count: int) -> list[TaskRunStateRecord]:
    """New state rows for the run: copies of its current one, with new ids."""
    with database.snapshot() as connection:
        stored = run_rows.find_task_run(connection, run_id)
    assert stored is not None
    assert stored.state is not None
    return [replace(stored.state, id=uuid7()) for _ in range(count)]

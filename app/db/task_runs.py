"""Storing and finding task runs: statements built once, executed with parameters."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db.records import (
    TASK_RUN_COLUMNS,
    TASK_RUN_STATE_COLUMNS,
    TaskRunRecord,
    TaskRunStateRecord,
)
from app.db.tables import task_run, task_run_state


class StoredTaskRun(NamedTuple):
    """A task run and its current state (None only if it never had one)."""

    run: TaskRunRecord
    state: TaskRunStateRecord | None


# INSERT ... ON CONFLICT DO NOTHING covers every unique key at once: the primary key and
# both idempotency indexes. RETURNING tells whether the row went in.
_INSERT_TASK_RUN_UNLESS_CONFLICTING = {
    name: dialect.insert(task_run).on_conflict_do_nothing().returning(task_run.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_INSERT_STATE = task_run_state.insert()

# A run with its current state, the columns in the order of the records' fields.
_WITH_CURRENT_STATE = select(
    *(task_run.c[name] for name in TASK_RUN_COLUMNS),
    *(task_run_state.c[name].label(f"state_{name}") for name in TASK_RUN_STATE_COLUMNS),
).select_from(task_run.outerjoin(task_run_state, task_run_state.c.id == task_run.c.state_id))
_BY_ID = _WITH_CURRENT_STATE.where(task_run.c.id == bindparam("id"))
_SAME_KEYS = (
    task_run.c.task_key == bindparam("task_key"),
    task_run.c.dynamic_key == bindparam("dynamic_key"),
)
_BY_KEY_IN_FLOW_RUN = _WITH_CURRENT_STATE.where(
    task_run.c.flow_run_id == bindparam("flow_run_id"), *_SAME_KEYS
)
_BY_KEY_WITHOUT_FLOW_RUN = _WITH_CURRENT_STATE.where(task_run.c.flow_run_id.is_(None), *_SAME_KEYS)


def insert_task_run_unless_conflicting(connection: Connection, run: TaskRunRecord) -> bool:
    """INSERT the run unless its id or idempotency key is taken; return whether it went in.

    One statement, and the database decides: no select-then-insert race is possible.
    """
    statement = _INSERT_TASK_RUN_UNLESS_CONFLICTING[connection.dialect.name]
    return connection.execute(statement, run.values()).first() is not None


def insert_state(connection: Connection, state: TaskRunStateRecord) -> None:
    """INSERT a state row."""
    connection.execute(_INSERT_STATE, state.values())


def find_task_run(connection: Connection, task_run_id: UUID) -> StoredTaskRun | None:
    """The run with this id, with its current state."""
    return _stored(connection.execute(_BY_ID, {"id": task_run_id}).first())


def find_task_run_by_key(
    connection: Connection, *, flow_run_id: UUID | None, task_key: str, dynamic_key: str
) -> StoredTaskRun | None:
    """The run with this idempotency key (a null flow_run_id matches only null)."""
    parameters: dict[str, Any] = {"task_key": task_key, "dynamic_key": dynamic_key}
    if flow_run_id is None:
        return _stored(connection.execute(_BY_KEY_WITHOUT_FLOW_RUN, parameters).first())
    parameters["flow_run_id"] = flow_run_id
    return _stored(connection.execute(_BY_KEY_IN_FLOW_RUN, parameters).first())


_RUN_WIDTH = len(TASK_RUN_COLUMNS)


def _stored(row: Row[Any] | None) -> StoredTaskRun | None:
    if row is None:
        return None
    run = TaskRunRecord(**dict(zip(TASK_RUN_COLUMNS, row[:_RUN_WIDTH], strict=True)))
    state_values = row[_RUN_WIDTH:]
    if state_values[0] is None:
        return StoredTaskRun(run, None)
    state = TaskRunStateRecord(**dict(zip(TASK_RUN_STATE_COLUMNS, state_values, strict=True)))
    return StoredTaskRun(run, state)

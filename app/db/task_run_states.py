"""Storing and finding the states of task runs, and the cache of COMPLETED states."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db.driver_statements import DriverStatement
from app.db.records import TASK_RUN_STATE_COLUMNS, CacheEntryRecord, TaskRunStateRecord
from app.db.tables import task_run_state, task_run_state_cache

_INSERT_STATE = DriverStatement(task_run_state.insert())
_DELETE_STATE = task_run_state.delete().where(task_run_state.c.id == bindparam("state_id"))
_INSERT_STATE_UNLESS_PRESENT = {
    name: dialect.insert(task_run_state).on_conflict_do_nothing().returning(task_run_state.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_STATE_COLUMNS = tuple(task_run_state.c[name] for name in TASK_RUN_STATE_COLUMNS)
_STATE_BY_ID = select(*_STATE_COLUMNS).where(task_run_state.c.id == bindparam("state_id"))
# Oldest first; states of one instant (a clamped timestamp, a client's clock) in id order.
_STATES_OF_RUN = (
    select(*_STATE_COLUMNS)
    .where(task_run_state.c.task_run_id == bindparam("task_run_id"))
    .order_by(task_run_state.c.timestamp, task_run_state.c.id)
)

_INSERT_CACHE_ENTRY = task_run_state_cache.insert()
_NEWEST_UNEXPIRED_ENTRY = (
    select(*_STATE_COLUMNS)
    .select_from(
        task_run_state_cache.join(
            task_run_state, task_run_state.c.id == task_run_state_cache.c.task_run_state_id
        )
    )
    .where(
        task_run_state_cache.c.cache_key == bindparam("cache_key"),
        or_(
            task_run_state_cache.c.cache_expiration.is_(None),
            task_run_state_cache.c.cache_expiration > bindparam("now"),
        ),
    )
    .order_by(task_run_state_cache.c.created.desc(), task_run_state_cache.c.id.desc())
    .limit(1)
)


def insert_state(connection: Connection, state: TaskRunStateRecord) -> None:
    """INSERT a state row."""
    _INSERT_STATE.execute(connection, state.values())


def delete_state(connection: Connection, state_id: UUID) -> None:
    """DELETE a state row (and its cache entries, by ON DELETE CASCADE)."""
    connection.execute(_DELETE_STATE, {"state_id": state_id})


def insert_state_unless_present(connection: Connection, state: TaskRunStateRecord) -> bool:
    """INSERT a state row unless one with its id exists; return whether it went in."""
    statement = _INSERT_STATE_UNLESS_PRESENT[connection.dialect.name]
    return connection.execute(statement, state.values()).first() is not None


def find_state(connection: Connection, state_id: UUID) -> TaskRunStateRecord | None:
    """The state with this id."""
    row = connection.execute(_STATE_BY_ID, {"state_id": state_id}).first()
    return _state(row) if row is not None else None


def find_states_of_run(connection: Connection, task_run_id: UUID) -> list[TaskRunStateRecord]:
    """The run's states, oldest first (none for an unknown run)."""
    rows = connection.execute(_STATES_OF_RUN, {"task_run_id": task_run_id})
    return [_state(row) for row in rows]


def insert_cache_entry(connection: Connection, entry: CacheEntryRecord) -> None:
    """INSERT a cache entry for a COMPLETED state."""
    connection.execute(_INSERT_CACHE_ENTRY, entry.values())


def find_cached_state(
    connection: Connection, *, cache_key: str, now: datetime
) -> TaskRunStateRecord | None:
    """The state of the newest entry under `cache_key` that has not expired at `now`."""
    row = connection.execute(_NEWEST_UNEXPIRED_ENTRY, {"cache_key": cache_key, "now": now}).first()
    return _state(row) if row is not None else None


def _state(row: Row[Any]) -> TaskRunStateRecord:
    return TaskRunStateRecord(**dict(zip(TASK_RUN_STATE_COLUMNS, row, strict=True)))

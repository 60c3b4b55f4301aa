"""Storing and finding task runs: statements built once, executed with parameters."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import Connection, Text, Update, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from app.db.driver_statements import DriverStatement
from app.db.records import (
    TASK_RUN_COLUMNS,
    TASK_RUN_STATE_COLUMNS,
    TaskRunRecord,
    TaskRunStateRecord,
)
from app.db.tables import task_run, task_run_state, task_run_tag
from app.db.task_run_states import delete_state, insert_state


class StoredTaskRun(NamedTuple):
    """A task run and its current state (None only if it never had one)."""

    run: TaskRunRecord
    state: TaskRunStateRecord | None


# INSERT ... ON CONFLICT DO NOTHING covers every unique key at once: the primary key and
# both idempotency indexes. RETURNING tells whether the row went in.
_INSERT_TASK_RUN_UNLESS_CONFLICTING = {
    name: DriverStatement(
        dialect.insert(task_run).on_conflict_do_nothing().returning(task_run.c.id)
    )
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}


def _insert_run_with_first_state() -> Any:
    """One PostgreSQL statement for every row of a new run: the run unless it conflicts (as
    above), and its first state and tags only if the run went in. RETURNING tells whether
    they did.
    """
    inserted = (
        postgresql.insert(task_run)
        .values({name: bindparam(f"run_{name}") for name in TASK_RUN_COLUMNS})
        .on_conflict_do_nothing()
        .returning(task_run.c.id)
        .cte("inserted_run")
    )
    # A data-modifying CTE runs whether or not the statement reads it.
    tags = (
        func.unnest(bindparam("tags", type_=postgresql.ARRAY(Text)))
        .table_valued("tag")
        .render_derived()
    )
    inserted_tags = (
        task_run_tag.insert()
        .from_select(
            ["task_run_id", "tag"], select(inserted.c.id, tags.c.tag).select_from(inserted)
        )
        .cte("inserted_tags")
    )
    return _insert_state_of(inserted).add_cte(inserted_tags)


def _insert_state_of(run: Any) -> Any:
    """An INSERT of the state in the `state_<column>` parameters for each row of `run` (a CTE
    with the run's `id`): none when `run` has no row. RETURNING tells whether it went in.
    """
    # In a SELECT list a parameter has no column to take its type from: each is cast.
    state_values = [
        run.c.id
        if name == "task_run_id"
        else cast(
            bindparam(f"state_{name}", type_=task_run_state.c[name].type),
            task_run_state.c[name].type,
        )
        for name in TASK_RUN_STATE_COLUMNS
    ]
    return (
        task_run_state.insert()
        .from_select(list(TASK_RUN_STATE_COLUMNS), select(*state_values).select_from(run))
        .returning(task_run_state.c.task_run_id)
    )


_INSERT_RUN_WITH_FIRST_STATE = DriverStatement(_insert_run_with_first_state())

# The columns a change of state writes; the run's key and inputs never change.
_STATE_FIELDS = (
    "updated",
    "state_id",
    "state_type",
    "state_name",
    "state_timestamp",
    "run_count",
    "flow_run_run_count",
    "expected_start_time",
    "next_scheduled_start_time",
    "start_time",
    "end_time",
    "total_run_time",
)


def _update_of_fields(names: Sequence[str]) -> Update:
    """An UPDATE of the run's fields `names`, each from the parameter `new_<name>`."""
    return (
        task_run.update()
        .where(task_run.c.id == bindparam("run_id"))
        .values({name: bindparam(f"new_{name}") for name in names})
    )


def _update_of_state_fields_unless_changed(names: Sequence[str]) -> Update:
    """`_update_of_fields(names)` of a run whose current state is still the one read (the
    parameter `read_state_id`). On PostgreSQL, an UPDATE that waited for another transaction's
    lock on the row checks that again on the row that transaction left.
    """
    return _update_of_fields(names).where(
        task_run.c.state_id.is_not_distinct_from(bindparam("read_state_id"))
    )


# PostgreSQL: the run's fields, then the new state's row if they were written, in one
# statement (one round trip, and a transaction of its own in autocommit).
_UPDATE_STATE_FIELDS_THEN_INSERT_STATE = DriverStatement(
    _insert_state_of(
        _update_of_state_fields_unless_changed(_STATE_FIELDS)
        .returning(task_run.c.id)
        .cte("updated_run")
    )
)
# The columns an event about the run may change: all but its identity and key.
_REPORTED_COLUMNS = tuple(
    name
    for name in TASK_RUN_COLUMNS
    if name not in ("id", "created", "flow_run_id", "task_key", "dynamic_key")
)
_UPDATE_REPORTED = _update_of_fields(_REPORTED_COLUMNS)
_CHANGE_KEYS = (
    task_run.update()
    .where(task_run.c.id == bindparam("run_id"))
    .values(
        flow_run_id=bindparam("new_flow_run_id"),
        task_key=bindparam("new_task_key"),
        dynamic_key=bindparam("new_dynamic_key"),
    )
)
# A null name keeps the current one: the update then only marks the run as updated.
_RENAME = (
    task_run.update()
    .where(task_run.c.id == bindparam("run_id"))
    .values(
        name=func.coalesce(bindparam("new_name", type_=Text), task_run.c.name),
        updated=bindparam("new_updated"),
    )
)
_DELETE = task_run.delete().where(task_run.c.id == bindparam("run_id"))
_INSERT_TAG = DriverStatement(
    task_run_tag.insert().values(task_run_id=bindparam("task_run_id"), tag=bindparam("tag"))
)
_DELETE_TAGS = task_run_tag.delete().where(task_run_tag.c.task_run_id == bindparam("run_id"))
# Waits for, then holds until the transaction ends, the run's row (PostgreSQL).
_LOCK = DriverStatement(
    select(task_run.c.id).where(task_run.c.id == bindparam("run_id")).with_for_update()
)

# Each run with its current state (none for a run that never had one).
RUN_WITH_CURRENT_STATE = task_run.outerjoin(
    task_run_state, task_run_state.c.id == task_run.c.state_id
)
# A run with its current state, the columns in the order of the records' fields.
_WITH_CURRENT_STATE = select(
    *(task_run.c[name] for name in TASK_RUN_COLUMNS),
    *(task_run_state.c[name].label(f"state_{name}") for name in TASK_RUN_STATE_COLUMNS),
).select_from(RUN_WITH_CURRENT_STATE)
_BY_ID = DriverStatement(_WITH_CURRENT_STATE.where(task_run.c.id == bindparam("id")))
# The same, the run's row locked until the transaction ends (PostgreSQL).
_BY_ID_LOCKED = DriverStatement(
    _WITH_CURRENT_STATE.where(task_run.c.id == bindparam("id")).with_for_update(of=task_run)
)
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
    inserted = statement.first(connection, run.values()) is not None
    if inserted:
        _insert_tags(connection, run)
    return inserted


def _insert_tags(connection: Connection, run: TaskRunRecord) -> None:
    """One task_run_tag row per tag of the run that a filter can ask for."""
    rows = [{"task_run_id": run.id, "tag": tag} for tag in _searchable_tags(run)]
    if rows:
        _INSERT_TAG.execute_many(connection, rows)


def _searchable_tags(run: TaskRunRecord) -> list[str]:
    """The run's distinct tags that a filter can ask for.

    A tag holding U+0000 is left out: PostgreSQL cannot store it in a column of its own, and
    no filter can name it (the contract forbids U+0000 in filters).
    """
    return [tag for tag in dict.fromkeys(run.tags) if "\x00" not in tag]


def insert_task_run_with_first_state(
    connection: Connection, run: TaskRunRecord, state: TaskRunStateRecord
) -> bool:
    """INSERT the run, its first state and its tags unless the run's id or idempotency key
    is taken; return whether they went in.

    On PostgreSQL one statement does it all: one round trip to the server, and a statement
    that needs no transaction around it (`Database.write(..., one_statement=True)`).
    """
    if connection.dialect.name != "postgresql":
        if not insert_task_run_unless_conflicting(connection, run):
            return False
        insert_state(connection, state)
        return True
    parameters = {f"run_{name}": value for name, value in run.values().items()}
    parameters.update({f"state_{name}": value for name, value in state.values().items()})
    parameters["tags"] = _searchable_tags(run)
    return _INSERT_RUN_WITH_FIRST_STATE.first(connection, parameters) is not None


def find_task_run_to_change(connection: Connection, task_run_id: UUID) -> StoredTaskRun | None:
    """The run with its current state, which no other transaction changes until this one ends.

    SQLite's write transactions already take turns. On PostgreSQL the run's row is locked
    and read in one statement; that is enough unless the statement waited for the lock: the
    run's row is then read as the transaction that held it left it, but the state it names
    may be newer than the statement's snapshot. Then (or when no run was found) the row is
    locked first and read by the next statement, which sees every state committed by then.
    """
    if connection.dialect.name != "postgresql":
        return find_task_run(connection, task_run_id)
    stored = _stored(_BY_ID_LOCKED.first(connection, {"id": task_run_id}))
    if stored is not None and _state_is_current(stored):
        return stored
    if _LOCK.first(connection, {"run_id": task_run_id}) is None:
        return None
    return find_task_run(connection, task_run_id)


def _state_is_current(stored: StoredTaskRun) -> bool:
    """Whether the state read with the run is the one the run names as current."""
    state_id = stored.state.id if stored.state is not None else None
    return state_id == stored.run.state_id


def state_fields(run: TaskRunRecord) -> dict[str, Any]:
    """The fields of the run that a change of state derives, as they are now."""
    return {name: getattr(run, name) for name in _STATE_FIELDS}


def write_current_state(
    connection: Connection,
    run: TaskRunRecord,
    state: TaskRunStateRecord,
    *,
    stored: Mapping[str, Any],
) -> bool:
    """INSERT the run's new current state and write the fields it derives (times, counts),
    unless the run's current state is no longer the one it was read with; return whether
    they were written. `stored` holds those fields as the database has them (`state_fields`
    of the run as read, before any change), its `state_id` the state read.

    On PostgreSQL one statement does both, so that it needs no transaction around it: a
    proposal decided on a read that took no lock writes by it, and reads and decides again
    if another writer changed the run's state meanwhile. On SQLite only the fields that
    changed are set: an UPDATE there rewrites the entries of every index on a column it
    sets, changed or not (most of these fields are indexed for the queries).
    """
    if connection.dialect.name != "postgresql":
        changed = tuple(name for name in _STATE_FIELDS if getattr(run, name) != stored[name])
        parameters = {f"new_{name}": getattr(run, name) for name in changed}
        parameters.update(run_id=run.id, read_state_id=stored["state_id"])
        # The state first: inserted after the run names it, SQLite records the (deferred)
        # foreign key's violation and looks for it again as the state goes in (2.5 % of a
        # proposal's instructions).
        insert_state(connection, state)
        if _update_of_unless_changed(changed).execute(connection, parameters) == 1:
            return True
        delete_state(connection, state.id)
        return False
    parameters = {f"new_{name}": getattr(run, name) for name in _STATE_FIELDS}
    parameters.update(run_id=run.id, read_state_id=stored["state_id"])
    parameters.update({f"state_{name}": value for name, value in state.values().items()})
    return _UPDATE_STATE_FIELDS_THEN_INSERT_STATE.first(connection, parameters) is not None


@functools.lru_cache(maxsize=128)
def _update_of_unless_changed(names: tuple[str, ...]) -> DriverStatement:
    """`_update_of_state_fields_unless_changed(names)` on the driver (a few combinations
    occur: one per kind of transition).
    """
    return DriverStatement(_update_of_state_fields_unless_changed(names))


def update_reported_fields(connection: Connection, run: TaskRunRecord) -> None:
    """Write every field of the run an event may report (all but its id, key and creation)."""
    values = {f"new_{name}": getattr(run, name) for name in _REPORTED_COLUMNS}
    connection.execute(_UPDATE_REPORTED, {"run_id": run.id, **values})
    # The tags may be among the changes.
    connection.execute(_DELETE_TAGS, {"run_id": run.id})
    _insert_tags(connection, run)


def change_task_run_keys(
    connection: Connection,
    *,
    task_run_id: UUID,
    flow_run_id: UUID | None,
    task_key: str,
    dynamic_key: str,
) -> bool:
    """Give the run another flow run, task key and dynamic key; False (nothing changed) when
    another run of that flow run (or, without one, another run without one) has those keys.
    """
    parameters = {
        "run_id": task_run_id,
        "new_flow_run_id": flow_run_id,
        "new_task_key": task_key,
        "new_dynamic_key": dynamic_key,
    }
    try:
        # A savepoint: a refused change must not end the transaction around it.
        with connection.begin_nested():
            connection.execute(_CHANGE_KEYS, parameters)
    except IntegrityError:
        return False
    return True


def rename_task_run(
    connection: Connection, *, task_run_id: UUID, name: str | None, updated: datetime
) -> bool:
    """Give the run a new name (None: keep it) and mark it updated; False if there is no such
    run.
    """
    parameters = {"run_id": task_run_id, "new_name": name, "new_updated": updated}
    return connection.execute(_RENAME, parameters).rowcount == 1


def delete_task_run(connection: Connection, task_run_id: UUID) -> bool:
    """Delete the run; its states, their cache entries and its tags go with it (ON DELETE
    CASCADE).
    """
    return connection.execute(_DELETE, {"run_id": task_run_id}).rowcount == 1


def find_task_run(connection: Connection, task_run_id: UUID) -> StoredTaskRun | None:
    """The run with this id, with its current state."""
    return _stored(_BY_ID.first(connection, {"id": task_run_id}))


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


def _stored(row: Sequence[Any] | None) -> StoredTaskRun | None:
    return None if row is None else stored_task_run(row)


def stored_task_run(row: Sequence[Any]) -> StoredTaskRun:
    """A run and its state from a row of its columns followed by its state's."""
    run = TaskRunRecord(**dict(zip(TASK_RUN_COLUMNS, row[:_RUN_WIDTH], strict=True)))
    state_values = row[_RUN_WIDTH:]
    if state_values[0] is None:
        return StoredTaskRun(run, None)
    state = TaskRunStateRecord(**dict(zip(TASK_RUN_STATE_COLUMNS, state_values, strict=True)))
    return StoredTaskRun(run, state)

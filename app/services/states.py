"""States: building state rows, and the bookkeeping a run gets on entering one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from app.db.records import TaskRunRecord, TaskRunStateRecord
from app.db.tables import INTEGER_MAX
from app.services.clock import LATEST, to_utc
from app.services.ids import uuid7
from generated import models

StateType = models.StateType

TERMINAL_STATE_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)
# The `type` of a state's `data` that says a result exists but was not kept anywhere.
UNPERSISTED_TYPE = "unpersisted"


def new_state_row(
    *, task_run: TaskRunRecord, proposed: models.StateCreate, now: datetime
) -> TaskRunStateRecord:
    """The row for a proposed state: a new id, the server's timestamp and a default name."""
    return state_row(
        task_run=task_run,
        state_type=StateType(proposed.type),
        name=proposed.name,
        message=proposed.message,
        data=proposed.data,
        details=proposed.state_details or models.StateDetails(),
        now=now,
    )


def state_row(
    *,
    task_run: TaskRunRecord,
    state_type: StateType,
    name: str | None,
    message: str | None,
    data: Any,
    details: models.StateDetails,
    now: datetime,
) -> TaskRunStateRecord:
    """A new state of `task_run`, stamped `now`; a missing name is the type in title case."""
    return TaskRunStateRecord(
        id=uuid7(),
        created=now,
        task_run_id=task_run.id,
        type=state_type.value,
        name=name if name is not None else state_type.value.title(),
        timestamp=now,
        message=message,
        data=data,
        state_details=stored_details(
            details,
            state_type=state_type,
            task_run_id=task_run.id,
            flow_run_id=task_run.flow_run_id,
            now=now,
        ),
    )


def stored_details(
    details: models.StateDetails,
    *,
    state_type: StateType,
    task_run_id: UUID,
    flow_run_id: UUID | None,
    now: datetime,
) -> dict[str, Any]:
    """The details as stored: the given run ids, a due time for SCHEDULED, datetimes in UTC."""
    updates: dict[str, Any] = {
        name: to_utc(value) for name, value in details if isinstance(value, datetime)
    }
    if state_type is StateType.SCHEDULED and details.scheduled_time is None:
        updates["scheduled_time"] = now
    updates["task_run_id"] = task_run_id
    updates["flow_run_id"] = flow_run_id
    return details.model_copy(update=updates).model_dump(mode="json")


def next_state_time(current: TaskRunStateRecord | None, *, now: datetime) -> datetime:
    """The timestamp of a run's next state: `now`, and always later than its current state.

    The clock can step back (NTP, a VM migrating), and a state recorded from an event bears
    the client's clock; a run's history stays in order anyway. After a state at the latest
    instant, the next one is at that instant too: the history is ordered by timestamp, then id.
    """
    if current is None or now > current.timestamp:
        return now
    if current.timestamp == LATEST:
        return LATEST
    return current.timestamp + timedelta(microseconds=1)


def enter_state(task_run: TaskRunRecord, state: TaskRunStateRecord) -> None:
    """Make `state` the run's current state and update the fields derived from its history.

    The previous state is the one `task_run.state_type` and `state_timestamp` still describe
    (none for a run being created).
    """
    new_type = StateType(state.type)
    previous_type = StateType(task_run.state_type) if task_run.state_type else None
    timestamp = state.timestamp

    if previous_type is StateType.RUNNING and task_run.state_timestamp is not None:
        task_run.total_run_time += (timestamp - task_run.state_timestamp).total_seconds()
    if new_type is StateType.RUNNING:
        task_run.run_count = _counted_once_more(task_run.run_count)
        if task_run.start_time is None:
            task_run.start_time = timestamp
    if new_type in TERMINAL_STATE_TYPES:
        if task_run.end_time is None:
            task_run.end_time = timestamp
        if task_run.start_time is None:
            task_run.start_time = timestamp
    elif previous_type in TERMINAL_STATE_TYPES:
        task_run.end_time = None

    # Only a SCHEDULED state says when the run is due; other states may carry a copied time.
    due = scheduled_time_of(state) if new_type is StateType.SCHEDULED else None
    if task_run.expected_start_time is None:
        task_run.expected_start_time = due or timestamp
    task_run.next_scheduled_start_time = due

    task_run.state_id = state.id
    task_run.state_type = new_type.value
    task_run.state_name = state.name
    task_run.state_timestamp = timestamp
    task_run.updated = timestamp


def _counted_once_more(count: int) -> int:
    """The count plus one, held at the column's maximum: a client's event may report any
    count the column holds, and the databases would disagree past it (PostgreSQL refuses).
    """
    return min(count + 1, INTEGER_MAX)


def scheduled_time_of(state: TaskRunStateRecord) -> datetime | None:
    """The `scheduled_time` in the state's details, if it has one."""
    value = state.state_details.get("scheduled_time")
    return datetime.fromisoformat(value) if value else None


def holds_persisted_data(state: TaskRunStateRecord) -> bool:
    """Whether the state carries a result that was kept: anything but nothing or an object whose
    `type` is "unpersisted" (with or without other keys, as Prefect reads it).
    """
    data = state.data
    if isinstance(data, dict):
        return bool(data) and data.get("type") != UNPERSISTED_TYPE
    return bool(data)


def state_model(state: TaskRunStateRecord) -> models.State:
    """The API representation of a stored state."""
    return models.State(
        id=state.id,
        type=StateType(state.type),
        name=state.name,
        timestamp=state.timestamp,
        message=state.message,
        data=state.data,
        state_details=models.StateDetails.model_validate(state.state_details),
    )

"""Task runs: creation, idempotent on (flow_run_id, task_key, dynamic_key), reads, renames
and deletion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.db import task_runs as rows
from app.db.records import TaskRunRecord, TaskRunStateRecord
from app.services.clock import to_utc, utcnow
from app.services.errors import Conflict, NotFound
from app.services.ids import uuid7
from app.services.names import random_name
from app.services.orchestration.policies import Orchestration, Policy, select_policy
from app.services.orchestration.transition import Transition
from app.services.orchestration_store import DatabaseOrchestrationStore
from app.services.states import TERMINAL_STATE_TYPES, enter_state, new_state_row, state_model
from generated import models

FLOW_RUN_ID_LABEL = "prefect.flow-run.id"
NOT_FOUND_MESSAGE = "Task run not found"
PENDING = models.StateCreate(type=models.StateType.PENDING)
# A create whose key is taken, then freed before it is read, inserts again: this many times.
_INSERT_ATTEMPTS = 3


@dataclass(frozen=True)
class CreateOutcome:
    """The run a create returns, and whether this request inserted it."""

    created: bool
    # The inserted run as the API shows it, or the run that already had the key.
    inserted: models.TaskRun | None = None
    existing: rows.StoredTaskRun | None = None

    @property
    def task_run(self) -> models.TaskRun:
        """The run as the API shows it.

        An existing run is built on demand, after the transaction has ended: on SQLite the
        other writers wait for as long as it lasts.
        """
        if self.inserted is not None:
            return self.inserted
        assert self.existing is not None
        return task_run_model(self.existing.run, self.existing.state, now=utcnow())


def create_task_run(*, connection: Connection, task_run: models.TaskRunCreate) -> CreateOutcome:
    """Insert a task run, or return the run that already has its idempotency key, unchanged.

    The key is (flow_run_id, task_key, dynamic_key), a null flow_run_id included. Unique
    indexes enforce it, so concurrent identical creates insert exactly one row.

    The first state is written as proposed (a forced transition), except that a deferred
    one, a background task's, goes through the background-task rules, as in Prefect.

    The answer of an inserted run is built from its rows before they are written, so a run
    whose answer cannot be built is never stored.

    :raises Conflict: the requested id belongs to a run with a different key.
    """
    now = utcnow()
    run = _new_task_run(task_run, now=now)
    transition = Transition(
        run=run,
        initial=None,
        proposed=new_state_row(task_run=run, proposed=_first_state(task_run), now=now),
        now=now,
    )
    orchestration = Orchestration(
        _first_state_policy(task_run), transition, DatabaseOrchestrationStore(connection)
    )
    orchestration.decide()
    # No rule that governs a first state leaves the run without one.
    state = transition.proposal
    enter_state(run, state)
    answer = task_run_model(run, state, now=now)
    for _ in range(_INSERT_ATTEMPTS):
        if rows.insert_task_run_with_first_state(connection, run, state):
            orchestration.written()
            return CreateOutcome(created=True, inserted=answer)
        existing = rows.find_task_run_by_key(
            connection,
            flow_run_id=task_run.flow_run_id,
            task_key=task_run.task_key,
            dynamic_key=task_run.dynamic_key,
        )
        if existing is not None:
            return CreateOutcome(created=False, existing=existing)
        if rows.find_task_run(connection, run.id) is not None:
            raise Conflict(f"Task run id {run.id} is already used by another task run.")
        # The run that held the key went between the insert and the read (deleted, or its
        # keys changed by an event; PostgreSQL's statements each see the latest commits).
    raise Conflict("The task run's key was taken and freed again while it was being created.")


def creates_in_one_statement(task_run: models.TaskRunCreate) -> bool:
    """Whether creating this run changes data by one statement on PostgreSQL: unless rules
    govern its first state (a background task's may queue it once written), a create is
    the insert of its rows, or a read of the run that has its key.
    """
    return not _first_state_policy(task_run).rules


def _first_state(task_run: models.TaskRunCreate) -> models.StateCreate:
    return task_run.state or PENDING


def _first_state_policy(task_run: models.TaskRunCreate) -> Policy:
    """Forced, unless deferred: a background task's first state gets its rules."""
    details = _first_state(task_run).state_details
    return select_policy(deferred=bool(details and details.deferred), force=True)


def rename_task_run(
    *, connection: Connection, task_run_id: UUID, update: models.TaskRunUpdate
) -> None:
    """Apply an update: a new name (a random one for null or ""), or only a new `updated`.
    One statement: it needs no transaction around it (`Database.write(..., one_statement=True)`).

    :raises NotFound: no task run has this id.
    """
    renamed = "name" in update.model_fields_set
    name = (update.name or random_name()) if renamed else None
    if not rows.rename_task_run(connection, task_run_id=task_run_id, name=name, updated=utcnow()):
        raise NotFound(NOT_FOUND_MESSAGE)


def delete_task_run(*, connection: Connection, task_run_id: UUID) -> None:
    """Delete a run, its states and their cache entries. One statement (the rest goes by ON
    DELETE CASCADE): it needs no transaction around it.

    :raises NotFound: no task run has this id.
    """
    if not rows.delete_task_run(connection, task_run_id):
        raise NotFound(NOT_FOUND_MESSAGE)


def _new_task_run(task_run: models.TaskRunCreate, *, now: datetime) -> TaskRunRecord:
    """The row of a new run, before it enters its first state."""
    return TaskRunRecord(
        id=task_run.id or uuid7(),
        created=now,
        updated=now,
        name=task_run.name or random_name(),
        flow_run_id=task_run.flow_run_id,
        task_key=task_run.task_key,
        dynamic_key=task_run.dynamic_key,
        cache_key=task_run.cache_key,
        cache_expiration=to_utc(task_run.cache_expiration) if task_run.cache_expiration else None,
        task_version=task_run.task_version,
        empirical_policy=effective_policy(task_run.empirical_policy),
        tags=[tag.root for tag in task_run.tags or []],
        labels=_labels(task_run),
        task_inputs=task_run.model_dump(mode="json", include={"task_inputs"}).get("task_inputs")
        or {},
        state_id=None,
        state_type=None,
        state_name=None,
        state_timestamp=None,
        run_count=0,
        flow_run_run_count=0,
        expected_start_time=None,
        next_scheduled_start_time=None,
        start_time=None,
        end_time=None,
        total_run_time=0.0,
    )


def effective_policy(policy: models.TaskRunPolicy | None) -> dict[str, Any]:
    """The policy as stored: the deprecated fields fill `retries` and `retry_delay` when unset."""
    values = (policy or models.TaskRunPolicy()).model_dump(mode="json")
    if not values["retries"] and values["max_retries"] != 0:
        values["retries"] = values["max_retries"]
    if not values["retry_delay"] and values["retry_delay_seconds"] != 0:
        values["retry_delay"] = values["retry_delay_seconds"]
    return values


def _labels(task_run: models.TaskRunCreate) -> dict[str, Any]:
    """The client's labels, on top of the label naming the run's flow run."""
    system = {FLOW_RUN_ID_LABEL: str(task_run.flow_run_id)} if task_run.flow_run_id else {}
    return system | (task_run.labels or {})


def task_run_model(
    run: TaskRunRecord, state: TaskRunStateRecord | None, *, now: datetime
) -> models.TaskRun:
    """The API representation of a stored run; the estimates are computed for `now`."""
    return models.TaskRun(
        id=run.id,
        created=run.created,
        updated=run.updated,
        name=run.name,
        flow_run_id=run.flow_run_id,
        task_key=run.task_key,
        dynamic_key=run.dynamic_key,
        cache_key=run.cache_key,
        cache_expiration=run.cache_expiration,
        task_version=run.task_version,
        empirical_policy=run.empirical_policy,
        tags=run.tags,
        labels=run.labels,
        state_id=run.state_id,
        task_inputs=run.task_inputs,
        state_type=models.StateType(run.state_type) if run.state_type else None,
        state_name=run.state_name,
        run_count=run.run_count,
        flow_run_run_count=run.flow_run_run_count,
        expected_start_time=run.expected_start_time,
        next_scheduled_start_time=run.next_scheduled_start_time,
        start_time=run.start_time,
        end_time=run.end_time,
        total_run_time=run.total_run_time,
        estimated_run_time=estimated_run_time(run, now=now),
        estimated_start_time_delta=estimated_start_time_delta(run, now=now),
        state=state_model(state) if state is not None else None,
    )


def estimated_run_time(run: TaskRunRecord, *, now: datetime) -> float:
    """Seconds run so far: the total, plus the current stretch while the run is RUNNING."""
    return run_time_at(now, run.state_type, run.state_timestamp, run.total_run_time)


def estimated_start_time_delta(run: TaskRunRecord, *, now: datetime) -> float:
    """Seconds between the expected and the actual start, or how late a pending start is."""
    return lateness_at(now, run.state_type, run.expected_start_time, run.start_time)


def run_time_at(
    now: datetime, state_type: str | None, state_timestamp: datetime | None, total_run_time: float
) -> float:
    """`estimated_run_time` at `now` of a run with these fields."""
    if state_type == models.StateType.RUNNING and state_timestamp is not None:
        return total_run_time + (now - state_timestamp).total_seconds()
    return total_run_time


def lateness_at(
    now: datetime,
    state_type: str | None,
    expected: datetime | None,
    started: datetime | None,
) -> float:
    """`estimated_start_time_delta` at `now` of a run with these fields."""
    if expected is None:
        return 0.0
    if started is not None:
        return max((started - expected).total_seconds(), 0.0)
    is_terminal = state_type is not None and state_type in TERMINAL_STATE_TYPES
    if expected < now and not is_terminal:
        return (now - expected).total_seconds()
    return 0.0

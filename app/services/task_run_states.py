"""Task-run states: proposing a new one (orchestrated), and reading a run's history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.db import task_run_states as state_rows
from app.db import task_runs as run_rows
from app.db.records import TaskRunRecord, TaskRunStateRecord
from app.services.errors import NotFound
from app.services.orchestration.policies import Orchestration, select_policy
from app.services.orchestration.transition import Transition
from app.services.orchestration_store import DatabaseOrchestrationStore
from app.services.states import enter_state, new_state_row, next_state_time, state_model
from app.services.task_runs import NOT_FOUND_MESSAGE
from generated import models

STATE_NOT_FOUND_MESSAGE = "Task run state not found"


@dataclass(frozen=True)
class SetStateOutcome:
    """What orchestration decided, and whether a state was written."""

    transition: Transition
    # The state written, or the run's current state when none was.
    state: TaskRunStateRecord | None
    written: bool

    @property
    def result(self) -> models.OrchestrationResult:
        """The answer, built on demand after the transaction has ended (on SQLite the other
        writers wait for as long as it lasts).
        """
        return models.OrchestrationResult(
            state=state_model(self.state) if self.state is not None else None,
            status=self.transition.status,
            details=self.transition.details,
        )


def set_task_run_state(
    *, connection: Connection, task_run_id: UUID, proposed: models.StateCreate, force: bool
) -> SetStateOutcome:
    """Orchestrate a proposed state for a run and write what the rules decide.

    No other transaction changes the run until this one ends, so proposals for one run are
    decided one at a time, each against the state the previous one left.

    :raises NotFound: no task run has this id.
    """
    stored = run_rows.find_task_run_to_change(connection, task_run_id)
    if stored is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    run, current = stored
    # As stored: the rules may change the run (a count started afresh) before it is written.
    stored_fields = run_rows.state_fields(run)
    now = next_state_time(current)
    transition = Transition(
        run=run,
        initial=current,
        proposed=new_state_row(task_run=run, proposed=proposed, now=now),
        now=now,
    )
    deferred = bool(proposed.state_details and proposed.state_details.deferred)
    orchestration = Orchestration(
        select_policy(deferred=deferred, force=force),
        transition,
        DatabaseOrchestrationStore(connection),
    )
    orchestration.decide()
    if transition.proposed is None:
        return SetStateOutcome(transition=transition, state=current, written=False)
    write_state(connection, run, transition.proposed, stored_fields=stored_fields)
    orchestration.written()
    return SetStateOutcome(transition=transition, state=transition.proposed, written=True)


def write_state(
    connection: Connection,
    run: TaskRunRecord,
    state: TaskRunStateRecord,
    *,
    stored_fields: Mapping[str, Any],
) -> None:
    """Store `state` as the run's new current state, with the run's derived fields;
    `stored_fields` are those fields as the database holds them (`state_fields` of the run as
    it was read).
    """
    enter_state(run, state)
    run_rows.write_current_state(connection, run, state, stored=stored_fields)


def read_task_run_states(*, connection: Connection, task_run_id: UUID) -> list[models.State]:
    """The run's states, oldest first; none for an unknown run."""
    return [state_model(state) for state in state_rows.find_states_of_run(connection, task_run_id)]


def read_task_run_state(*, connection: Connection, state_id: UUID) -> models.State:
    """The state with this id.

    :raises NotFound: no task-run state has this id.
    """
    state = state_rows.find_state(connection, state_id)
    if state is None:
        raise NotFound(STATE_NOT_FOUND_MESSAGE)
    return state_model(state)

"""Task-run states: proposing a new one (orchestrated), and reading a run's history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.db import task_run_states as state_rows
from app.db import task_runs as run_rows
from app.db.database import Database
from app.db.records import TaskRunStateRecord
from app.services.clock import utcnow
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


# How often a proposal decided on a read without a lock is decided again when another writer
# changed the run's state before it could write; then it locks the run (PostgreSQL).
UNLOCKED_ATTEMPTS = 3


def propose_state(
    database: Database, *, task_run_id: UUID, proposed: models.StateCreate, force: bool
) -> SetStateOutcome:
    """Orchestrate a proposed state for a run and write what the rules decide; return once
    it is committed.

    Each proposal for a run is decided against the state the previous one left, and its
    decision written only while that state is still the run's current one. On PostgreSQL a
    proposal is first decided on a read that takes no lock, and written by one statement,
    committed by itself, that checks the run's state: two round trips instead of four
    (BEGIN, the locking read, the write, COMMIT). If another writer came first, it is read
    and decided again. A proposal whose rules act after the write (a background task queued,
    a COMPLETED state cached) needs a transaction, as does one that lost `UNLOCKED_ATTEMPTS`
    times: it is decided again in one that locks the run.

    :raises NotFound: no task run has this id.
    """
    if database.autocommits_one_statement_writes:
        outcome = database.write(
            lambda connection: propose_without_lock(
                connection=connection, task_run_id=task_run_id, proposed=proposed, force=force
            ),
            one_statement=True,
        )
        if outcome is not None:
            return outcome
    return database.write(
        lambda connection: set_task_run_state(
            connection=connection, task_run_id=task_run_id, proposed=proposed, force=force
        )
    )


def propose_without_lock(
    *, connection: Connection, task_run_id: UUID, proposed: models.StateCreate, force: bool
) -> SetStateOutcome | None:
    """Decide a proposal on the run as last committed and write the decision by one statement
    that checks the run's state is still the one read; None when the proposal must be made in
    a transaction that locks the run (see `propose_state`).

    :raises NotFound: no task run has this id.
    """
    for _ in range(UNLOCKED_ATTEMPTS):
        stored = _found(run_rows.find_task_run(connection, task_run_id))
        orchestration, stored_fields = _decide(connection, stored, proposed, force=force)
        transition = orchestration.transition
        if transition.proposed is None:
            return _unwritten(transition)
        if orchestration.acts_after_write():
            return None
        if _write(connection, transition, stored_fields):
            return _written(transition)
    return None


def set_task_run_state(
    *, connection: Connection, task_run_id: UUID, proposed: models.StateCreate, force: bool
) -> SetStateOutcome:
    """Orchestrate a proposed state for a run in the connection's transaction, the run
    locked against every other writer until it ends, and write what the rules decide.

    :raises NotFound: no task run has this id.
    """
    stored = _found(run_rows.find_task_run_to_change(connection, task_run_id))
    orchestration, stored_fields = _decide(connection, stored, proposed, force=force)
    transition = orchestration.transition
    if transition.proposed is None:
        return _unwritten(transition)
    if not _write(connection, transition, stored_fields):
        raise RuntimeError(f"the state of task run {task_run_id} changed while it was locked")
    orchestration.written()
    return _written(transition)


def _found(stored: run_rows.StoredTaskRun | None) -> run_rows.StoredTaskRun:
    if stored is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return stored


def _decide(
    connection: Connection,
    stored: run_rows.StoredTaskRun,
    proposed: models.StateCreate,
    *,
    force: bool,
) -> tuple[Orchestration, dict[str, Any]]:
    """Let the policy's rules decide the proposal for the run as read; the decision, and the
    run's state fields as stored (the rules may change the run, a count started afresh).
    """
    run, current = stored
    stored_fields = run_rows.state_fields(run)
    # The rules compare times with the server's clock; the state written is stamped later
    # than the current one, which a client's clock may have put ahead of the server's.
    now = utcnow()
    timestamp = next_state_time(current, now=now)
    transition = Transition(
        run=run,
        initial=current,
        proposed=new_state_row(task_run=run, proposed=proposed, now=timestamp),
        now=now,
    )
    deferred = bool(proposed.state_details and proposed.state_details.deferred)
    orchestration = Orchestration(
        select_policy(deferred=deferred, force=force),
        transition,
        DatabaseOrchestrationStore(connection),
    )
    orchestration.decide()
    return orchestration, stored_fields


def _write(
    connection: Connection, transition: Transition, stored_fields: Mapping[str, Any]
) -> bool:
    """Store the decided state as the run's current one, with the run's derived fields,
    unless the run's state changed since it was read; whether it was stored.
    """
    run, state = transition.run, transition.proposal
    enter_state(run, state)
    return run_rows.write_current_state(connection, run, state, stored=stored_fields)


def _unwritten(transition: Transition) -> SetStateOutcome:
    return SetStateOutcome(transition=transition, state=transition.initial, written=False)


def _written(transition: Transition) -> SetStateOutcome:
    return SetStateOutcome(transition=transition, state=transition.proposal, written=True)


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

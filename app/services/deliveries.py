"""Delivering background tasks to task workers: one run at a time, each to one worker.

The queue is in the database. A worker claims the next run of its task keys for a while (the
claim's lease); acknowledging the delivery takes the run off the queue, a failed delivery gives
it back (ahead of the others), and a claim nobody renews (its service process died) expires.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from sqlalchemy import Connection

from app.db import deliveries as rows
from app.db import task_runs as run_rows
from app.db.records import TaskRunStateRecord
from app.observability.metrics import QueueSizes
from app.services.clock import utcnow
from app.services.states import StateType
from app.services.task_runs import task_run_model
from generated import models

# How long a claim lasts unless renewed: the longest a run waits after its worker's service
# process died before another process delivers it again.
CLAIM_SECONDS = 30


def claim_next_delivery(
    *, connection: Connection, task_keys: list[str], claim_id: UUID
) -> models.TaskRun | None:
    """Claim the next run waiting for a worker of `task_keys`; None when there is none.

    A run that is no longer a SCHEDULED background task (it was deleted, or moved on by
    other means) is taken off the queue instead of being delivered.
    """
    now = utcnow()
    while True:
        run_id = rows.claim_next(
            connection,
            task_keys=task_keys,
            claim_id=claim_id,
            now=now,
            claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
        )
        if run_id is None:
            return None
        stored = run_rows.find_task_run(connection, run_id)
        if stored is not None and _waits_for_a_worker(stored.state):
            return task_run_model(stored.run, stored.state, now=now)
        rows.remove(connection, run_id)


def _waits_for_a_worker(state: TaskRunStateRecord | None) -> bool:
    return (
        state is not None
        and state.type == StateType.SCHEDULED
        and bool(state.state_details.get("deferred"))
    )


def renew_claim(*, connection: Connection, task_run_id: UUID, claim_id: UUID) -> bool:
    """Keep a delivery claimed while its worker is still there; False if the claim was lost."""
    until = utcnow() + timedelta(seconds=CLAIM_SECONDS)
    return rows.renew_claim(connection, task_run_id=task_run_id, claim_id=claim_id, until=until)


def acknowledge_delivery(*, connection: Connection, task_run_id: UUID, claim_id: UUID) -> bool:
    """The worker has the run: take it off the queue; False if the claim was lost."""
    return rows.remove_claimed(connection, task_run_id=task_run_id, claim_id=claim_id)


def abandon_delivery(*, connection: Connection, task_run_id: UUID, claim_id: UUID) -> None:
    """The worker quit instead of taking the run: take it off the queue, as Prefect does (the
    run stays SCHEDULED).
    """
    rows.remove_claimed(connection, task_run_id=task_run_id, claim_id=claim_id)


def return_delivery(*, connection: Connection, task_run_id: UUID, claim_id: UUID) -> None:
    """The delivery failed (the worker left, or answered something else): the run goes back,
    ahead of the runs not tried yet.
    """
    rows.release_claim(connection, task_run_id=task_run_id, claim_id=claim_id)


def queue_sizes(*, connection: Connection) -> QueueSizes:
    """The queue as the metrics show it: runs waiting, runs out with a worker, and how long
    the longest-waiting run has waited.
    """
    now = utcnow()
    counted = rows.count_queue(connection, now=now)
    oldest = counted.oldest_enqueued
    return QueueSizes(
        waiting=counted.waiting,
        delivered=counted.delivered,
        oldest_waiting_seconds=0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0),
    )

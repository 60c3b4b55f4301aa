"""The queue of background tasks: runs waiting for a task worker, claimed one at a time."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import Connection, and_, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db.database import after_commit
from app.db.notifications import notify_other_processes
from app.db.signals import Signal
from app.db.tables import task_run_delivery

# Given whenever a transaction has put a run on the queue: one of this process, or
# (through the channel) one of another process.
ENQUEUED = Signal()
ENQUEUED_CHANNEL = "taskrun_enqueued"

_ENQUEUE = {
    name: dialect.insert(task_run_delivery)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
# The next run a worker of these task keys may take: first the retries, then the oldest,
# never one claimed by a worker that is still within its claim. On PostgreSQL, concurrent
# claims skip each other's rows instead of waiting for them.
_NEXT_UNCLAIMED = (
    select(task_run_delivery.c.task_run_id)
    .where(
        task_run_delivery.c.task_key.in_(bindparam("task_keys", expanding=True)),
        or_(
            task_run_delivery.c.claimed_until.is_(None),
            task_run_delivery.c.claimed_until < bindparam("now"),
        ),
    )
    .order_by(
        task_run_delivery.c.retry.desc(),
        task_run_delivery.c.enqueued,
        task_run_delivery.c.task_run_id,
    )
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM = (
    task_run_delivery.update()
    .where(task_run_delivery.c.task_run_id == _NEXT_UNCLAIMED)
    .values(claim_id=bindparam("claim_id"), claimed_until=bindparam("claimed_until"))
    .returning(task_run_delivery.c.task_run_id)
)
_CLAIMED = and_(
    task_run_delivery.c.task_run_id == bindparam("run_id"),
    task_run_delivery.c.claim_id == bindparam("claim"),
)
_RENEW = task_run_delivery.update().where(_CLAIMED).values(claimed_until=bindparam("until"))
_RELEASE = (
    task_run_delivery.update().where(_CLAIMED).values(claim_id=None, claimed_until=None, retry=True)
)
_REMOVE_CLAIMED = task_run_delivery.delete().where(_CLAIMED)
_REMOVE = task_run_delivery.delete().where(task_run_delivery.c.task_run_id == bindparam("run_id"))


def enqueue(
    connection: Connection, *, task_run_id: UUID, task_key: str, retry: bool, now: datetime
) -> None:
    """Put the run on the queue of its task key (again, unclaimed, if it is there already)."""
    values = {
        "task_run_id": task_run_id,
        "task_key": task_key,
        "retry": retry,
        "enqueued": now,
        "claim_id": None,
        "claimed_until": None,
    }
    insert = _ENQUEUE[connection.dialect.name]
    statement = insert.on_conflict_do_update(
        index_elements=[task_run_delivery.c.task_run_id],
        set_={name: insert.excluded[name] for name in values if name != "task_run_id"},
    )
    connection.execute(statement, values)
    after_commit(ENQUEUED.notify)
    notify_other_processes(connection, ENQUEUED_CHANNEL)


def claim_next(
    connection: Connection,
    *,
    task_keys: list[str],
    claim_id: UUID,
    now: datetime,
    claimed_until: datetime,
) -> UUID | None:
    """Claim the next run for these task keys until `claimed_until`; None if there is none."""
    parameters = {
        "task_keys": task_keys,
        "now": now,
        "claim_id": claim_id,
        "claimed_until": claimed_until,
    }
    run_id: UUID | None = connection.execute(_CLAIM, parameters).scalar()
    return run_id


def renew_claim(
    connection: Connection, *, task_run_id: UUID, claim_id: UUID, until: datetime
) -> bool:
    """Extend a claim; False if it is no longer this claim."""
    parameters = {"run_id": task_run_id, "claim": claim_id, "until": until}
    return connection.execute(_RENEW, parameters).rowcount == 1


def release_claim(connection: Connection, *, task_run_id: UUID, claim_id: UUID) -> None:
    """Give a claimed run back to the queue, ahead of the runs not yet tried."""
    connection.execute(_RELEASE, {"run_id": task_run_id, "claim": claim_id})


def remove_claimed(connection: Connection, *, task_run_id: UUID, claim_id: UUID) -> bool:
    """Take a claimed run off the queue (delivered, or given up); False if not this claim."""
    parameters = {"run_id": task_run_id, "claim": claim_id}
    return connection.execute(_REMOVE_CLAIMED, parameters).rowcount == 1


def remove(connection: Connection, task_run_id: UUID) -> None:
    """Take a run off the queue, whoever claimed it."""
    connection.execute(_REMOVE, {"run_id": task_run_id})

"""The queue of background tasks: runs waiting for a task worker, claimed one at a time."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Subquery,
    Update,
    and_,
    bindparam,
    func,
    not_,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from app.db.database import after_commit
from app.db.notifications import notify_other_processes
from app.db.signals import Signal
from app.db.tables import task_run, task_run_delivery

# Given whenever a transaction has put a run on the queue: one of this process, or
# (through the channel) one of another process.
ENQUEUED = Signal()
ENQUEUED_CHANNEL = "taskrun_enqueued"

_ENQUEUE = {
    name: dialect.insert(task_run_delivery)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}


def _in_delivery_order(
    columns: ReadOnlyColumnCollection[str, Any],
) -> tuple[ColumnElement[Any], ...]:
    """The order runs are delivered in, of the queue or of a selection of its columns: first
    the retries, then the oldest.
    """
    return (columns.retry.desc(), columns.enqueued, columns.task_run_id)


def _next_of_keys(keys: ColumnElement[bool], name: str) -> Subquery:
    """The next run of the task keys `keys` selects: the first of their index entries that
    no worker within its claim holds. On PostgreSQL, concurrent claims skip each other's
    rows instead of waiting for them.
    """
    delivery = task_run_delivery.c
    return (
        select(delivery.task_run_id, delivery.retry, delivery.enqueued)
        .where(
            keys,
            or_(delivery.claimed_until.is_(None), delivery.claimed_until < bindparam("now")),
        )
        .order_by(*_in_delivery_order(delivery))
        .limit(1)
        .with_for_update(skip_locked=True)
        .subquery(name)
    )


def _next_of_key(number: int) -> Subquery:
    """The next run of one task key (the `number`th bound)."""
    key = task_run_delivery.c.task_key == bindparam(f"task_key_{number}")
    return _next_of_keys(key, f"next_of_key_{number}")


def _claim(next_run: ColumnElement[Any]) -> Update:
    return (
        task_run_delivery.update()
        .where(task_run_delivery.c.task_run_id == next_run)
        .values(claim_id=bindparam("claim_id"), claimed_until=bindparam("claimed_until"))
        .returning(task_run_delivery.c.task_run_id)
    )


# Up to this many keys, a branch per key (below); beyond, SQLite's limit of 500 terms of a
# compound SELECT and PostgreSQL's stack depth are near, and one IN list of all the keys is
# read instead: every waiting run of those keys, sorted, at each claim.
MAX_KEYS_BY_BRANCH = 100
_CLAIM_OF_MANY_KEYS = _claim(
    select(
        _next_of_keys(
            task_run_delivery.c.task_key.in_(bindparam("task_keys", expanding=True)),
            "next_of_keys",
        ).c.task_run_id
    ).scalar_subquery()
)


@functools.lru_cache(maxsize=64)
def _claim_statement(keys: int) -> Update:
    """Claim the next run a worker of `keys` task keys may take.

    Each key's next run is read from the index in the delivery order, and the first of
    those taken: with every key in one IN list the database would read and sort all the
    waiting runs of the keys for each claim, which a queue of 50,000 runs made 16 ms, with
    SQLite's writer waiting.
    """
    candidates = union_all(*(select(_next_of_key(number)) for number in range(keys))).subquery()
    first = (
        select(candidates.c.task_run_id)
        .order_by(*_in_delivery_order(candidates.c))
        .limit(1)
        .scalar_subquery()
    )
    return _claim(first)


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
    # A key holding NUL names no run (no stored task key holds one), and PostgreSQL cannot
    # take it as text.
    keys = [key for key in dict.fromkeys(task_keys) if "\x00" not in key]
    if not keys:
        return None
    parameters: dict[str, Any] = {"now": now, "claim_id": claim_id, "claimed_until": claimed_until}
    if len(keys) > MAX_KEYS_BY_BRANCH:
        statement = _CLAIM_OF_MANY_KEYS
        parameters["task_keys"] = keys
    else:
        statement = _claim_statement(len(keys))
        parameters.update({f"task_key_{number}": key for number, key in enumerate(keys)})
    run_id: UUID | None = connection.execute(statement, parameters).scalar()
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


class QueueRow(NamedTuple):
    """The queue counted: runs waiting, runs delivered and not acknowledged, and when the
    longest-waiting run was put on it (None when none waits).
    """

    waiting: int
    delivered: int
    oldest_enqueued: datetime | None


def _queue_counts() -> Select[int, int, datetime | None]:
    delivery = task_run_delivery.c
    waiting = or_(delivery.claimed_until.is_(None), delivery.claimed_until < bindparam("now"))
    # A run that left SCHEDULED (moved on by set_state or an event) stays on the queue until
    # a worker of its key comes across it: it is not counted.
    return (
        select(
            func.count().filter(waiting),
            func.count().filter(not_(waiting)),
            func.min(delivery.enqueued).filter(waiting),
        )
        .select_from(task_run_delivery.join(task_run, task_run.c.id == delivery.task_run_id))
        .where(task_run.c.state_type == "SCHEDULED")
    )


_QUEUE_COUNTS = _queue_counts()


def count_queue(connection: Connection, *, now: datetime) -> QueueRow:
    """The queue's runs counted by whether a worker holds them at `now`."""
    row = connection.execute(_QUEUE_COUNTS, {"now": now}).one()
    return QueueRow(int(row[0]), int(row[1]), row[2])

"""Events clients send: each stored once, and a task run's state recorded from it."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.db import events as rows
from app.db.database import attempt_in_savepoint
from app.db.records import EventRecord
from app.services.clock import parse_instant, utcnow
from app.services.event_feed import OVERLAP
from app.services.task_run_recorder import (
    UnrecordableEvent,
    is_client_task_run_event,
    record_task_run_event,
)

logger = logging.getLogger(__name__)


# Storing an event that took longer than this stamps it received again before its commit.
RECEIVED_AGAIN_AFTER = OVERLAP / 4


def event_record(event: dict[str, Any], *, received: datetime) -> EventRecord:
    """The stored form of an event as it arrived (already checked against the contract).

    :raises UnrepresentableInstant: its `occurred` is a date-time Python cannot hold.
    """
    follows = event.get("follows")
    return EventRecord(
        id=UUID(event["id"]),
        occurred=parse_instant(event["occurred"]),
        event=event["event"],
        resource_id=event["resource"]["prefect.resource.id"],
        resource=event["resource"],
        related=event.get("related", []),
        payload=event.get("payload", {}),
        follows=UUID(follows) if follows else None,
        received=received,
    )


def receive_event(*, connection: Connection, record: EventRecord) -> bool:
    """Store the event, and record the task-run state it reports; False if it was stored
    before (clients send an event again when they are not sure it arrived).

    An event that reports a task run it cannot be recorded for, or whose recording the
    database refuses, is stored anyway, and said so in the log.
    """
    if not rows.insert_event_unless_present(connection, record):
        return False
    if is_client_task_run_event(record):
        problem = _recording_problem(connection, record)
        if problem is not None:
            logger.warning(
                "event %s (%s) stored, not recorded: %s", record.id, record.event, problem
            )
    return True


def received_at_commit(*, connection: Connection, record: EventRecord) -> EventRecord:
    """The stored event, received again now if storing it took long (a wait for the run's
    row, or for SQLite's writers' turn): the feeds of the other processes read back only
    OVERLAP of receipt times, so an event must commit soon after the time it is received.
    """
    now = utcnow()
    if now - record.received < RECEIVED_AGAIN_AFTER:
        return record
    rows.set_event_received(connection, record.id, now)
    return replace(record, received=now)


def _recording_problem(connection: Connection, record: EventRecord) -> str | None:
    """Record the task-run state the event reports; why it could not be, or None."""
    try:
        refused = attempt_in_savepoint(
            connection, lambda: record_task_run_event(connection, record)
        )
    except UnrecordableEvent as problem:
        return str(problem)
    except (ValueError, TypeError, OverflowError) as error:
        # A value the recorder or the driver could not take, found while recording: by its
        # class alone, as the message can quote it. The event itself is stored all the same.
        return f"a value of its report could not be stored ({type(error).__name__})"
    if refused is None:
        return None
    # By its class alone: the message can quote the event's values.
    return f"the database refused it ({type(refused.orig).__name__})"


def event_json(record: EventRecord) -> dict[str, Any]:
    """The event as /api/events/out sends it: as it was sent, plus when it was received."""
    return {
        "occurred": record.occurred.isoformat(),
        "event": record.event,
        "resource": record.resource,
        "related": record.related,
        "payload": record.payload,
        "id": str(record.id),
        "follows": str(record.follows) if record.follows else None,
        "received": record.received.isoformat(),
    }

"""Storing events once each, and reading them back by time."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, Uuid, bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from app.db.notifications import notify_other_processes
from app.db.records import EVENT_COLUMNS, EventRecord
from app.db.signals import Signal
from app.db.tables import event
from app.db.types import UTCDateTime

# Given when another service process has stored events (through the channel; on SQLite
# this process's own commits give it too); this process hands over the events it stores
# itself without being told.
STORED_ELSEWHERE = Signal()
STORED_CHANNEL = "taskrun_events"

_INSERT_UNLESS_PRESENT = {
    name: dialect.insert(event).on_conflict_do_nothing().returning(event.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_COLUMNS = tuple(event.c[name] for name in EVENT_COLUMNS)
# Oldest first by when they occurred, from a position (occurred, id) on, a page at a time.
_OCCURRED_AFTER = (
    select(*_COLUMNS)
    .where(
        tuple_(event.c.occurred, event.c.id)
        > tuple_(bindparam("after", type_=UTCDateTime()), bindparam("after_id", type_=Uuid())),
        event.c.occurred <= bindparam("until"),
    )
    .order_by(event.c.occurred, event.c.id)
    .limit(bindparam("page"))
)
# In the order they were received, from a position (received, id) on, a page at a time.
_IDS_RECEIVED_AFTER = (
    select(event.c.id, event.c.received)
    .where(
        # The first condition, implied by the second, is one the index of `received` serves.
        event.c.received >= bindparam("after", type_=UTCDateTime()),
        tuple_(event.c.received, event.c.id)
        > tuple_(bindparam("after", type_=UTCDateTime()), bindparam("after_id", type_=Uuid())),
    )
    .order_by(event.c.received, event.c.id)
    .limit(bindparam("page"))
)
# Before every id: with a time, the position from which every event of that time on is read.
BEFORE_EVERY_ID = UUID(int=0)
_WITH_IDS = (
    select(*_COLUMNS)
    .where(event.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(event.c.received, event.c.id)
)


# The oldest events received before a time, a batch at a time.
_DELETE_RECEIVED_BEFORE = event.delete().where(
    event.c.id.in_(
        select(event.c.id)
        .where(event.c.received < bindparam("before"))
        .order_by(event.c.received)
        .limit(bindparam("limit"))
    )
)


def delete_events_received_before(connection: Connection, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` events received before `before`, the oldest first; how many."""
    result = connection.execute(_DELETE_RECEIVED_BEFORE, {"before": before, "limit": limit})
    return result.rowcount


def insert_event_unless_present(connection: Connection, record: EventRecord) -> bool:
    """INSERT the event unless one with its id is stored; return whether it went in."""
    statement = _INSERT_UNLESS_PRESENT[connection.dialect.name]
    inserted = connection.execute(statement, record.values()).first() is not None
    if inserted:
        notify_other_processes(connection, STORED_CHANNEL)
    return inserted


def set_event_received(connection: Connection, event_id: UUID, received: datetime) -> None:
    """Change when the stored event counts as received."""
    connection.execute(update(event).where(event.c.id == event_id).values(received=received))


def events_occurred_after(
    connection: Connection, *, after: datetime, after_id: UUID, until: datetime, page: int
) -> list[EventRecord]:
    """Up to `page` events that occurred after the position (`after`, `after_id`) and by
    `until`, oldest first.
    """
    parameters = {"after": after, "after_id": after_id, "until": until, "page": page}
    return [_event(row) for row in connection.execute(_OCCURRED_AFTER, parameters)]


def events_received_since(
    connection: Connection, *, since: datetime, page: int, known: Collection[UUID]
) -> tuple[datetime | None, list[EventRecord]]:
    """Of the events received at or after `since`, the latest time one was received (None:
    there is none) and those whose ids are not `known`, in the order they were received.

    The ids are read `page` at a time, every page of them: a burst of more than a page of
    events within the span read again at each poll must not hide the events after it. Only
    the ids of the known ones are read.
    """
    latest: datetime | None = None
    new: list[UUID] = []
    after, after_id = since, BEFORE_EVERY_ID
    while True:
        parameters = {"after": after, "after_id": after_id, "page": page}
        received = connection.execute(_IDS_RECEIVED_AFTER, parameters).all()
        new += [event_id for event_id, _ in received if event_id not in known]
        if received:
            after_id, after = received[-1]
            latest = after
        if len(received) < page:
            break
    records = [
        _event(row)
        for start in range(0, len(new), page)
        for row in connection.execute(_WITH_IDS, {"ids": new[start : start + page]})
    ]
    return latest, records


def _event(row: Row[Any]) -> EventRecord:
    return EventRecord(**dict(zip(EVENT_COLUMNS, row, strict=True)))

"""Storing events once each, and reading them back by time."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, Uuid, bindparam, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from app.db.records import EVENT_COLUMNS, EventRecord
from app.db.tables import event
from app.db.types import UTCDateTime

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
_RECEIVED_SINCE = (
    select(*_COLUMNS)
    .where(event.c.received >= bindparam("since"))
    .order_by(event.c.received, event.c.id)
    .limit(bindparam("page"))
)


def insert_event_unless_present(connection: Connection, record: EventRecord) -> bool:
    """INSERT the event unless one with its id is stored; return whether it went in."""
    statement = _INSERT_UNLESS_PRESENT[connection.dialect.name]
    return connection.execute(statement, record.values()).first() is not None


def events_occurred_after(
    connection: Connection, *, after: datetime, after_id: UUID, until: datetime, page: int
) -> list[EventRecord]:
    """Up to `page` events that occurred after the position (`after`, `after_id`) and by
    `until`, oldest first.
    """
    parameters = {"after": after, "after_id": after_id, "until": until, "page": page}
    return [_event(row) for row in connection.execute(_OCCURRED_AFTER, parameters)]


def events_received_since(
    connection: Connection, *, since: datetime, page: int
) -> list[EventRecord]:
    """Up to `page` events received at or after `since`, in the order they were received."""
    rows = connection.execute(_RECEIVED_SINCE, {"since": since, "page": page})
    return [_event(row) for row in rows]


def _event(row: Row[Any]) -> EventRecord:
    return EventRecord(**dict(zip(EVENT_COLUMNS, row, strict=True)))

"""The events channels: events in (stored, and task runs recorded from them) and events out
(followed by filter), as asyncapi.yaml describes them.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from datetime import datetime
from typing import Any
from uuid import UUID

from app.db import events as event_rows
from app.db.database import Database
from app.db.records import EventRecord
from app.handlers.inbox import Inbox
from app.handlers.sockets import INTERNAL_ERROR, POLICY_VIOLATION, Disconnected, Frame, Socket
from app.observability import metrics
from app.services.clock import UnrepresentableInstant, parse_instant, utcnow
from app.services.event_feed import EventFeed, FollowerTooSlow
from app.services.event_filters import EventFilter, UnsupportedFilter, parse_filter
from app.services.events import event_json, event_record, receive_event, received_at_commit

logger = logging.getLogger(__name__)

# The largest event stored, as Prefect's server has it.
MAX_EVENT_BYTES = 1_500_000
BACKFILL_PAGE = 250

# What became of an event received, as the metrics count it.
STORED = "stored"
DUPLICATE = "duplicate"
REFUSED = "refused"


class EventsInHandler:
    """Stores the events a client sends, one frame each, and records task runs from them."""

    def __init__(self, *, database: Database, feed: EventFeed, executor: Executor) -> None:
        self._database = database
        self._feed = feed
        self._executor = executor

    async def __call__(self, socket: Socket) -> None:
        """Serve one client's socket until it goes."""
        try:
            while True:
                await self._receive(socket, await socket.receive())
        except Disconnected:
            return

    async def _receive(self, socket: Socket, frame: Frame) -> None:
        problems = _event_problems(socket, frame)
        if problems:
            logger.warning("an event was not stored: %s", "; ".join(problems))
            metrics.count_event(REFUSED)
            return
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._executor, self._store, frame.data)
        if stored is None:
            metrics.count_event(DUPLICATE)
            return
        metrics.count_event(STORED)
        self._feed.publish([stored])

    def _store(self, event: dict[str, Any]) -> EventRecord | None:
        """Store the event; the record stored, or None when it was stored before."""
        with self._database.transaction() as connection:
            # Received when a thread takes the event up, not when its frame arrived, and
            # again just before the commit when storing it waited: other processes read
            # again only the last seconds of events by when they were received.
            record = event_record(event, received=utcnow())
            if not receive_event(connection=connection, record=record):
                return None
            return received_at_commit(connection=connection, record=record)


def _event_problems(socket: Socket, frame: Frame) -> list[str]:
    """Why the event is not stored, as the log says it: no value of the event is quoted
    (events carry run names, parameters' keys, whatever a client put in them).
    """
    if frame.size > MAX_EVENT_BYTES:
        return [f"the event is {frame.size} bytes, more than {MAX_EVENT_BYTES}"]
    if frame.data is None:
        return ["the frame is not JSON"]
    problems = socket.problems("event", frame.data)
    if problems:
        return [problem.without_value() for problem in problems]
    return _occurred_problems(frame.data)


def _occurred_problems(event: dict[str, Any]) -> list[str]:
    """Why the event's `occurred`, a valid date-time, cannot be stored, if it cannot."""
    try:
        parse_instant(event["occurred"])
    except UnrepresentableInstant as problem:
        return [f"occurred: {problem}"]
    return []


class EventsOutHandler:
    """Sends a client the events that match its filter: the stored ones, then new ones."""

    def __init__(self, *, database: Database, feed: EventFeed, executor: Executor) -> None:
        self._database = database
        self._feed = feed
        self._executor = executor

    async def __call__(self, socket: Socket) -> None:
        """Serve one follower's socket until it goes."""
        try:
            following = await _filter(socket)
            if following is None:
                return
            event_filter, backfill = following
            async with self._feed.follow() as follower, Inbox(socket) as inbox:
                sent = await self._backfill(socket, event_filter) if backfill else set()
                while True:
                    arrived = await inbox.race(follower.next())
                    # A follower has nothing to say after its filter: only events count.
                    if isinstance(arrived, EventRecord) and _new_match(arrived, event_filter, sent):
                        await socket.send(_frame(arrived))
        except Disconnected:
            return
        except FollowerTooSlow:
            await socket.close(INTERNAL_ERROR, "too far behind; reconnect to catch up")

    async def _backfill(self, socket: Socket, event_filter: EventFilter) -> set[UUID]:
        """Send the stored events that match, oldest first; return their ids."""
        sent: set[UUID] = set()
        after, after_id = event_filter.backfill_since(utcnow()), event_rows.BEFORE_EVERY_ID
        while True:
            page = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._page, event_filter.until, after, after_id
            )
            for record in page:
                if event_filter.matches(record):
                    await socket.send(_frame(record))
                    sent.add(record.id)
            if len(page) < BACKFILL_PAGE:
                return sent
            after, after_id = page[-1].occurred, page[-1].id

    def _page(self, until: datetime, after: datetime, after_id: UUID) -> list[EventRecord]:
        with self._database.snapshot() as connection:
            return event_rows.events_occurred_after(
                connection, after=after, after_id=after_id, until=until, page=BACKFILL_PAGE
            )


def _new_match(record: EventRecord, event_filter: EventFilter, sent: set[UUID]) -> bool:
    """A live event the follower wants and was not sent among the stored ones."""
    return record.id not in sent and event_filter.matches(record)


def _frame(record: EventRecord) -> dict[str, Any]:
    return {"type": "event", "event": event_json(record)}


async def _filter(socket: Socket) -> tuple[EventFilter, bool] | None:
    """The follower's filter, and whether it wants the stored events that match first; None
    when the socket was closed instead.
    """
    frame = (await socket.receive()).data
    if frame is None:
        problems = ["not JSON"]
    else:
        problems = [str(problem) for problem in socket.problems("filter", frame)]
    if problems:
        await socket.close(POLICY_VIOLATION, f"invalid filter: {'; '.join(problems)}")
        return None
    try:
        return parse_filter(frame["filter"]), frame.get("backfill", True)
    except UnsupportedFilter as unsupported:
        await socket.close(POLICY_VIOLATION, str(unsupported))
        return None

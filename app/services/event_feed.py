"""The stream of events the /api/events/out followers of this process receive.

Events stored by this process are handed over at once. Events stored by the service's other
processes (other workers, other machines on one PostgreSQL) are found by reading the newest
rows of the event table while anyone follows: as soon as another process says it stored
some (PostgreSQL's NOTIFY, or the wake file beside an SQLite database), and a few times a
second in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from datetime import datetime, timedelta
from uuid import UUID

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable
from app.db.records import EventRecord
from app.observability.logs import log_failure
from app.services.clock import utcnow

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# Rows are read again this far back: another process's transaction may commit an event a
# little after a later one, and ids already handed over are skipped.
OVERLAP = timedelta(seconds=2)
POLL_PAGE = 500
# A follower this far behind is dropped (it reconnects and catches up from the table).
FOLLOWER_BACKLOG = 10_000


class FollowerTooSlow(Exception):
    """A follower fell FOLLOWER_BACKLOG events behind and was dropped."""


class Follower:
    """One follower's queue of events, in arrival order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[EventRecord | None] = asyncio.Queue(maxsize=FOLLOWER_BACKLOG)
        self.dropped = False

    def offer(self, record: EventRecord) -> None:
        if self.dropped:
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped = True
            self._queue = asyncio.Queue(maxsize=1)
            self._queue.put_nowait(None)

    async def next(self) -> EventRecord:
        """The next event.

        :raises FollowerTooSlow: the follower was dropped.
        """
        record = await self._queue.get()
        if record is None:
            raise FollowerTooSlow
        return record


class EventFeed:
    """Hands every event stored anywhere to this process's followers, each event once."""

    def __init__(self, database: Database, *, executor: Executor) -> None:
        self._database = database
        self._executor = executor
        self._followers: set[Follower] = set()
        self._handed_over: dict[UUID, datetime] = {}
        self._watermark = utcnow()
        self._poller: asyncio.Task[None] | None = None

    def publish(self, records: list[EventRecord]) -> None:
        """Hand over events this process has just stored (on the event loop)."""
        for record in records:
            self._hand_over(record)
        if self._poller is None:
            # Nobody follows, so no poll forgets the ids: those too old to be read again go
            # now, or a process that only stores events would keep every id it ever saw.
            self._forget_before(utcnow() - 2 * OVERLAP)

    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[Follower]:
        """A new follower for as long as the block lasts."""
        follower = Follower()
        if not self._followers:
            self._watermark = utcnow() - OVERLAP
            self._poller = asyncio.create_task(self._poll())
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._followers.discard(follower)
            if not self._followers and self._poller is not None:
                self._poller.cancel()
                self._poller = None

    def _hand_over(self, record: EventRecord) -> None:
        if record.id in self._handed_over:
            return
        self._handed_over[record.id] = record.received
        for follower in self._followers:
            follower.offer(record)

    async def _poll(self) -> None:
        while True:
            seen = rows.STORED_ELSEWHERE.generation
            await self._read_new()
            await rows.STORED_ELSEWHERE.wait(seen=seen, timeout=POLL_SECONDS)

    async def _read_new(self) -> None:
        """Hand over the events stored since the watermark that were not handed over yet."""
        known = frozenset(self._handed_over)
        try:
            latest, records = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._read_since, self._watermark - OVERLAP, known
            )
        except DatabaseUnavailable as error:
            # A known fault, already explained: no traceback to read.
            logger.warning("reading new events postponed: database unavailable (%s)", error)
            return
        except Exception as error:
            log_failure(
                logger,
                logging.ERROR,
                "reading new events failed; trying again",
                error,
                with_stack=True,
            )
            return
        for record in records:
            self._hand_over(record)
        if latest is not None:
            self._watermark = max(self._watermark, latest)
        self._forget_before(self._watermark - 2 * OVERLAP)

    def _read_since(
        self, since: datetime, known: frozenset[UUID]
    ) -> tuple[datetime | None, list[EventRecord]]:
        with self._database.snapshot() as connection:
            return rows.events_received_since(connection, since=since, page=POLL_PAGE, known=known)

    def _forget_before(self, moment: datetime) -> None:
        """Forget the ids of events too old to be read again, from the oldest handed over on:
        the cost is the ids forgotten, not those kept. (An id handed over after a newer one
        stays until that one goes.)
        """
        handed_over = self._handed_over
        while handed_over:
            oldest = next(iter(handed_over))
            if handed_over[oldest] >= moment:
                return
            del handed_over[oldest]

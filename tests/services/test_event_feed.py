"""The feed of stored events: a read that fails is tried again at the next poll, and said
in the log by the fault's name, never by the message (which can quote events).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable
from app.db.migrate import upgrade
from app.db.records import EventRecord
from app.services.clock import utcnow
from app.services.event_feed import POLL_PAGE, EventFeed
from tests.support.failing_database import FailingDatabase


def follow_until_read_twice(database: FailingDatabase) -> None:
    """Follow the feed until it has tried to read the stored events twice."""

    async def follow() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            feed = EventFeed(cast(Database, database), executor=executor)
            async with feed.follow():
                while database.attempts < 2:
                    await asyncio.sleep(0.01)

    asyncio.run(follow())


def test_an_unavailable_database_is_a_warning_and_the_feed_reads_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.services.event_feed")
    follow_until_read_twice(FailingDatabase(DatabaseUnavailable("SQLITE_BUSY")))

    first = caplog.records[0]
    assert first.levelno == logging.WARNING
    assert first.getMessage() == (
        "reading new events postponed: database unavailable (SQLITE_BUSY)"
    )


def test_any_other_failure_is_an_error_with_its_places_not_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.services.event_feed")
    follow_until_read_twice(FailingDatabase(RuntimeError("event payload: secret-value")))

    first = caplog.records[0]
    logged = first.getMessage()
    assert first.levelno == logging.ERROR
    assert logged.startswith("reading new events failed; trying again: builtins.RuntimeError\n")
    assert "in snapshot" in logged  # where it was raised
    assert "secret" not in logged
    assert first.exc_info is None


def event_record(received: datetime) -> EventRecord:
    return EventRecord(
        id=uuid.uuid4(),
        occurred=received,
        event="test.event",
        resource_id="test.resource",
        resource={"prefect.resource.id": "test.resource"},
        related=[],
        payload={},
        follows=None,
        received=received,
    )


def stored_elsewhere(database: Database, records: list[EventRecord]) -> list[uuid.UUID]:
    """Store events as another process would (not published to this process's feed)."""
    with database.transaction() as connection:
        for record in records:
            rows.insert_event_unless_present(connection, record)
    return [record.id for record in records]


def test_a_burst_of_more_than_a_page_from_elsewhere_hides_nothing_after_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'feed.db'}"
    upgrade(url)
    database = Database(url)
    start = utcnow()
    burst = [event_record(start + timedelta(microseconds=n)) for n in range(POLL_PAGE + 100)]
    stored_elsewhere(database, burst)

    async def follow() -> list[uuid.UUID]:
        handed: list[uuid.UUID] = []
        with ThreadPoolExecutor(max_workers=1) as executor:
            feed = EventFeed(database, executor=executor)
            async with feed.follow() as follower:
                while len(handed) < len(burst):
                    handed.append((await asyncio.wait_for(follower.next(), 5)).id)
                stored_elsewhere(database, [event_record(utcnow())])
                handed.append((await asyncio.wait_for(follower.next(), 5)).id)
        return handed

    try:
        handed = asyncio.run(follow())
    finally:
        database.dispose()

    assert handed[: len(burst)] == [record.id for record in burst]
    assert len(handed) == len(burst) + 1


def test_without_followers_the_ids_of_old_events_are_not_kept() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        feed = EventFeed(cast(Database, None), executor=executor)
        long_ago = utcnow() - timedelta(hours=1)

        for number in range(1000):
            feed.publish([event_record(long_ago + timedelta(seconds=number))])
        feed.publish([event_record(utcnow())])

    assert len(feed._handed_over) == 1

"""The feed of stored events: a read that fails is tried again at the next poll, and said
in the log by the fault's name, never by the message (which can quote events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import create_engine, text

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable, normalise_url
from app.db.migrate import upgrade
from app.db.records import EventRecord
from app.handlers.events import EventsInHandler
from app.services.clock import utcnow
from app.services.event_feed import OVERLAP, POLL_PAGE, EventFeed
from tests.support.databases import created_run, empty_database
from tests.support.failing_database import FailingDatabase
from tests.support.locks import hold_in_another_process
from tests.support.sockets import task_run_event


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


@pytest.fixture
def migrated_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with empty_database(backend, tmp_path) as url:
        upgrade(url)
        yield url


def hold_run_for(database_url: str, run_id: uuid.UUID, seconds: float) -> threading.Thread:
    """Keep the run's row (PostgreSQL) or the writers' turn (SQLite) from everyone else for
    `seconds`, from another connection or process; returns once it is held.
    """
    if database_url.startswith("sqlite"):
        holder = hold_in_another_process(
            Path(database_url.removeprefix("sqlite:///") + "-write.lock"), seconds
        )
        waiting = threading.Thread(target=holder.communicate)
        waiting.start()
        return waiting
    held = threading.Event()

    def hold() -> None:
        engine = create_engine(normalise_url(database_url))
        try:
            with engine.begin() as connection:
                connection.execute(
                    text("SELECT id FROM task_run WHERE id = :id FOR UPDATE"), {"id": run_id}
                )
                held.set()
                time.sleep(seconds)
        finally:
            engine.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(timeout=10)
    return thread


def test_an_event_committed_long_after_it_arrived_reaches_other_processes_followers(
    migrated_url: str,
) -> None:
    # Its recording waits for the run (or SQLite's writers' turn) longer than a follower
    # elsewhere reads back; it must reach that follower all the same.
    database = Database(migrated_url)
    run = created_run(database)
    completed = task_run_event(
        str(run.id), "COMPLETED", task_run={"task_key": "k", "dynamic_key": "0"}
    )
    executor = ThreadPoolExecutor(max_workers=2)
    here = EventsInHandler(
        database=database, feed=EventFeed(database, executor=executor), executor=executor
    )
    elsewhere = EventFeed(database, executor=executor)

    held_for = OVERLAP.total_seconds() + 1.5

    async def follow_elsewhere() -> set[uuid.UUID]:
        loop = asyncio.get_running_loop()
        async with elsewhere.follow() as follower:
            await asyncio.sleep(0.5)  # following, and reading the table a few times a second
            holder = hold_run_for(migrated_url, run.id, held_for)
            storing = loop.run_in_executor(None, here._store, completed)
            # Meanwhile other events arrive and are committed, later ones.
            started = time.monotonic()
            while time.monotonic() - started < held_for:
                other = task_run_event(str(uuid.uuid4()), "PENDING", orchestration=None)
                await loop.run_in_executor(None, here._store, other)
                await asyncio.sleep(0.1)
            await storing
            holder.join()
            received: set[uuid.UUID] = set()
            with contextlib.suppress(TimeoutError):
                while True:
                    received.add((await asyncio.wait_for(follower.next(), 2)).id)
            return received

    try:
        assert uuid.UUID(completed["id"]) in asyncio.run(follow_elsewhere())
    finally:
        executor.shutdown()
        database.dispose()

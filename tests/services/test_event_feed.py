"""The feed of stored events: a read that fails is tried again at the next poll, and said
in the log by the fault's name, never by the message (which can quote events).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest

from app.db.database import Database, DatabaseUnavailable
from app.services.event_feed import EventFeed
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

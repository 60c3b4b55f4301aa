"""The pruner of old events: when it first looks, and a database that cannot be written
postponing it, quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import cast

import pytest

from app.db.database import Database, DatabaseUnavailable
from app.services.event_retention import EventPruner
from tests.support.failing_database import FailingDatabase

# Shorter than a minute: the pruner looks once per retention period.
RETENTION = timedelta(seconds=0.2)


def prune_once(database: FailingDatabase) -> float:
    """Start a pruner, stop it after its first transaction; how long after the start that was."""

    async def start_and_stop() -> float:
        with ThreadPoolExecutor(max_workers=1) as executor:
            pruner = EventPruner(cast(Database, database), retention=RETENTION, executor=executor)
            started = time.monotonic()
            pruner.start()
            while database.attempts == 0:
                await asyncio.sleep(0.01)
            first_look = time.monotonic() - started
            await pruner.stop()
            return first_look

    return asyncio.run(start_and_stop())


def test_the_first_look_comes_one_interval_after_the_start() -> None:
    first_look = prune_once(FailingDatabase(DatabaseUnavailable("no matter")))

    assert first_look >= RETENTION.total_seconds()


def test_an_unavailable_database_is_a_warning_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.services.event_retention")
    prune_once(FailingDatabase(DatabaseUnavailable("the database files cannot be written")))

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "deleting old events postponed: database unavailable (the database files cannot be written)"
    )
    assert record.exc_info is None


def test_any_other_failure_is_an_error_with_its_places_not_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.services.event_retention")
    prune_once(FailingDatabase(RuntimeError("unexpected: secret-value")))

    [record] = caplog.records
    logged = record.getMessage()
    assert record.levelno == logging.ERROR
    assert logged.startswith(
        "deleting old events failed; trying again later: builtins.RuntimeError\n"
    )
    assert "in transaction" in logged  # where it was raised
    assert "secret" not in logged
    assert record.exc_info is None

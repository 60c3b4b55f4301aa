"""The pruner of old events: when it first looks, how it stops, and a database that cannot
be written postponing it, quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

import pytest

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable
from app.observability import metrics
from app.services.event_retention import PRUNE_BATCH, EventPruner
from tests.support.failing_database import FailingDatabase

# Shorter than a minute: the pruner looks once per retention period.
RETENTION = timedelta(seconds=0.2)


def prune_once(database: FailingDatabase, *, then: Callable[[], bool] = lambda: True) -> float:
    """Start a pruner, stop it after its first transaction and once `then` holds (the
    failure logged: stopping earlier may cancel the report); how long after the start the
    transaction came.
    """

    async def start_and_stop() -> float:
        with ThreadPoolExecutor(max_workers=1) as executor:
            pruner = EventPruner(cast(Database, database), retention=RETENTION, executor=executor)
            started = time.monotonic()
            pruner.start()
            while database.attempts == 0:
                await asyncio.sleep(0.01)
            first_look = time.monotonic() - started
            while not then():
                await asyncio.sleep(0.01)
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
    unavailable = DatabaseUnavailable("the database files cannot be written")
    prune_once(FailingDatabase(unavailable), then=lambda: bool(caplog.records))

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
    prune_once(
        FailingDatabase(RuntimeError("unexpected: secret-value")), then=lambda: bool(caplog.records)
    )

    [record] = caplog.records
    logged = record.getMessage()
    assert record.levelno == logging.ERROR
    assert logged.startswith(
        "deleting old events failed; trying again later: builtins.RuntimeError\n"
    )
    assert "in transaction" in logged  # where it was raised
    assert "secret" not in logged
    assert record.exc_info is None


# Full batches of old events waiting, far more than are deleted before the pruner is stopped.
BACKLOG_BATCHES = 40


def test_stop_waits_for_the_batch_under_way_and_begins_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[str] = []

    def a_full_batch(_connection: Any, *, before: Any, limit: int) -> int:
        batches.append("begun")
        time.sleep(0.05)
        batches[-1] = "committed"
        return limit if len(batches) < BACKLOG_BATCHES else 0

    monkeypatch.setattr(rows, "delete_events_received_before", a_full_batch)

    async def stop_during_the_backlog() -> list[str]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            pruner = EventPruner(
                cast(Database, WorkingDatabase()), retention=RETENTION, executor=executor
            )
            pruner.start()
            while len(batches) < 3:
                await asyncio.sleep(0.01)
            await pruner.stop()
            when_stopped = list(batches)
            await asyncio.sleep(0.2)
        assert batches == when_stopped
        return when_stopped

    when_stopped = asyncio.run(stop_during_the_backlog())

    assert set(when_stopped) == {"committed"}


class WorkingDatabase:
    """Gives every transaction a connection that the patched statement does not use."""

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        yield None


def prune_until(condition: Callable[[], bool]) -> None:
    """Start a pruner over a WorkingDatabase, and stop it once `condition` holds."""

    async def start_and_stop() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            pruner = EventPruner(
                cast(Database, WorkingDatabase()), retention=RETENTION, executor=executor
            )
            pruner.start()
            while not condition():
                await asyncio.sleep(0.01)
            await pruner.stop()

    asyncio.run(start_and_stop())


def test_a_batch_that_fails_while_stopping_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.services.event_retention")
    begun = []

    def a_failing_batch(_connection: Any, *, before: Any, limit: int) -> int:
        begun.append(True)
        time.sleep(0.1)
        raise RuntimeError("unexpected: secret-value")

    monkeypatch.setattr(rows, "delete_events_received_before", a_failing_batch)

    prune_until(lambda: bool(begun))

    [record] = caplog.records
    assert record.getMessage() == "deleting old events failed: builtins.RuntimeError"
    assert record.levelno == logging.WARNING


def test_a_backlog_leaves_the_writer_to_requests_between_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans: list[tuple[float, float]] = []

    def a_full_batch(_connection: Any, *, before: Any, limit: int) -> int:
        began = time.monotonic()
        time.sleep(0.02)
        spans.append((began, time.monotonic()))
        return limit if len(spans) < 4 else 0

    monkeypatch.setattr(rows, "delete_events_received_before", a_full_batch)

    prune_until(lambda: len(spans) == 4)

    busy = sum(end - began for began, end in spans)
    elapsed = spans[-1][1] - spans[0][0]
    # Four batches of 20 ms, each of the first three followed by a pause of about 80 ms.
    assert elapsed > 3 * busy


def pruned_so_far() -> float:
    return metrics.REGISTRY.get_sample_value("taskrun_events_pruned_total") or 0.0


def test_the_events_deleted_are_counted_in_the_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    deleted: list[int] = []

    def two_full_batches_then_seven(_connection: Any, *, before: Any, limit: int) -> int:
        batch = [limit, limit, 7][len(deleted)] if len(deleted) < 3 else 0
        deleted.append(batch)
        return batch

    monkeypatch.setattr(rows, "delete_events_received_before", two_full_batches_then_seven)
    before = pruned_so_far()

    prune_until(lambda: len(deleted) >= 3)

    assert pruned_so_far() - before == 2 * PRUNE_BATCH + 7

"""The time arithmetic the database does for history and the duration sorts gives, to the
microsecond, what the service computes for a run's answer, on SQLite and PostgreSQL.

SQLite's date functions round a fraction of a second to the millisecond: read whole, an
instant at 12:00:03.9996 would count as 12:00:04.9996, a second late.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Text, bindparam, create_engine, select, update

from app.db import task_run_queries
from app.db.database import Database
from app.db.tables import task_run
from app.db.task_run_queries import (
    epoch_microseconds,
    estimated_lateness,
    estimated_run_time,
    everything,
    task_run_history,
)
from app.db.types import UTCDateTime
from app.services.task_runs import lateness_at, run_time_at
from tests.support.databases import created_run

NOW = datetime(2026, 12, 6, 12, 0, 0, 250_000, tzinfo=UTC)
# Instants whose fraction SQLite's millisecond rounding would carry into the next second,
# or that lie at the ends of the ranges the database can compute with.
EDGES = [
    datetime(2026, 12, 6, 11, 59, 3, 999_999, tzinfo=UTC),
    datetime(2026, 12, 6, 11, 59, 3, 999_500, tzinfo=UTC),
    datetime(2026, 12, 6, 11, 59, 3, 999_499, tzinfo=UTC),
    datetime(2026, 12, 6, 11, 59, 3, 500, tzinfo=UTC),
    datetime(2026, 12, 6, 11, 59, 4, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
]
# Gaps of more than a day, whose seconds as a float must be rounded once, as Python's
# total_seconds() rounds them: PostgreSQL's interval keeps the days apart from the time.
LONG_GAPS = [
    timedelta(days=1, microseconds=86_008_635_065),
    timedelta(days=2, hours=3, microseconds=123_457),
    timedelta(days=400, microseconds=1),
]


def stored(database: Database, **fields: object) -> None:
    """A run with these fields written as they are, past the rules that would derive them."""
    run = created_run(database)
    database.write(
        lambda connection: connection.execute(
            update(task_run).where(task_run.c.id == run.id).values(**fields)
        )
    )


def computed(database: Database, *columns: object) -> tuple[object, ...]:
    with database.snapshot() as connection:
        return tuple(connection.execute(select(*columns)).one())  # type: ignore[call-overload]


@pytest.mark.parametrize("started", EDGES, ids=str)
def test_lateness_of_a_started_run(database: Database, started: datetime) -> None:
    expected = started - timedelta(microseconds=1)
    stored(database, expected_start_time=expected, start_time=started, state_type="COMPLETED")

    (lateness,) = computed(database, estimated_lateness(NOW))

    assert lateness == lateness_at(NOW, "COMPLETED", expected, started) == 1e-06


@pytest.mark.parametrize("expected", EDGES[:5], ids=str)
def test_lateness_of_a_run_not_started(database: Database, expected: datetime) -> None:
    stored(database, expected_start_time=expected, start_time=None, state_type="PENDING")

    (lateness,) = computed(database, estimated_lateness(NOW))

    assert lateness == lateness_at(NOW, "PENDING", expected, None)


@pytest.mark.parametrize("entered", EDGES[:5], ids=str)
def test_run_time_of_a_running_run(database: Database, entered: datetime) -> None:
    stored(database, state_type="RUNNING", state_timestamp=entered, total_run_time=2.5)

    (run_time,) = computed(database, estimated_run_time(NOW))

    assert run_time == run_time_at(NOW, "RUNNING", entered, 2.5)


@pytest.mark.parametrize("gap", LONG_GAPS, ids=str)
def test_long_gaps_give_the_seconds_a_run_gives(database: Database, gap: timedelta) -> None:
    entered = NOW - gap
    stored(
        database,
        state_type="RUNNING",
        state_timestamp=entered,
        total_run_time=0.0,
        expected_start_time=entered - gap,
        start_time=entered,
    )

    run_time, lateness = computed(database, estimated_run_time(NOW), estimated_lateness(NOW))

    assert run_time == run_time_at(NOW, "RUNNING", entered, 0.0) == gap.total_seconds()
    assert lateness == lateness_at(NOW, "RUNNING", entered - gap, entered) == gap.total_seconds()


@pytest.mark.parametrize("expected", EDGES[:6], ids=str)
def test_an_instant_counts_in_the_interval_that_holds_it(
    database: Database, expected: datetime
) -> None:
    # Intervals of one second from the whole second before the instant's: it is in the
    # second one.
    start = expected.replace(microsecond=0) - timedelta(seconds=1)
    stored(database, expected_start_time=expected)

    with database.snapshot() as connection:
        (row,) = task_run_history(
            connection,
            everything(),
            start=start,
            end=start + timedelta(seconds=3),
            interval=timedelta(seconds=1),
            now=NOW,
        )

    assert row.interval == 1


@pytest.mark.parametrize("with_unixepoch", [True, False], ids=["unixepoch", "strftime"])
def test_sqlite_counts_the_microseconds_of_its_text_exactly(
    monkeypatch: pytest.MonkeyPatch, with_unixepoch: bool
) -> None:
    # unixepoch() is SQLite 3.38's; before it, strftime('%s') does the same work.
    if with_unixepoch and sqlite3.sqlite_version_info < (3, 38):
        pytest.skip("this SQLite has no unixepoch()")
    if not with_unixepoch:
        monkeypatch.setattr(task_run_queries, "_SQLITE_WITH_UNIXEPOCH", (999,))
    engine = create_engine("sqlite://", query_cache_size=0)
    text_of = UTCDateTime().bind_processor(engine.dialect)
    assert text_of is not None
    microseconds = task_run_queries._EpochMicroseconds(bindparam("instant", type_=Text))

    with engine.connect() as connection:
        counted = [
            connection.execute(select(microseconds), {"instant": text_of(edge)}).scalar_one()
            for edge in EDGES
        ]
    engine.dispose()

    assert counted == [epoch_microseconds(edge) for edge in EDGES]

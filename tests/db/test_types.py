"""UTCDateTime on SQLite: the text it stores, and the instant it reads back, aware and in UTC."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError

from app.db.types import UTCDateTime

metadata = MetaData()
instants = Table(
    "instants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=True),
)


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 12, 6, 7, 15, 9, 123456, tzinfo=UTC),
        datetime(2026, 12, 6, 7, 15, 9, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 6, 9, 15, tzinfo=timezone(timedelta(hours=2))),
    ],
    ids=["microseconds", "whole-second", "earliest", "latest", "other-offset"],
)
def test_an_instant_reads_back_equal_and_in_utc(engine: Engine, instant: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(insert(instants).values(id=1, at=instant))
        read = connection.execute(select(instants.c.at)).scalar_one()

    assert read == instant
    assert read.tzinfo is UTC
    assert read.isoformat() == instant.astimezone(UTC).isoformat()


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 12, 6, 7, 15, 9, 123456, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 6, 9, 15, tzinfo=timezone(timedelta(hours=2))),
    ],
    ids=["microseconds", "earliest", "other-offset"],
)
def test_the_stored_text_is_sqlalchemys_text_of_the_utc_instant(
    engine: Engine, instant: datetime
) -> None:
    with engine.begin() as connection:
        connection.execute(insert(instants).values(id=1, at=instant))
        stored = connection.execute(text("SELECT at FROM instants")).scalar_one()

    dialect = sqlite.dialect()
    sqlalchemys_text = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemys_text is not None
    assert stored == sqlalchemys_text(instant.astimezone(UTC).replace(tzinfo=None))


def test_a_naive_datetime_is_refused(engine: Engine) -> None:
    with engine.begin() as connection, pytest.raises(StatementError, match="naive datetime"):
        connection.execute(insert(instants).values(id=1, at=datetime(2026, 12, 6)))


def test_null_reads_back_as_none(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(insert(instants).values(id=1, at=None))

        assert connection.execute(select(instants.c.at)).scalar_one() is None


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-12-06 07:15:09", datetime(2026, 12, 6, 7, 15, 9, tzinfo=UTC)),
        ("2026-12-06T09:15:09+02:00", datetime(2026, 12, 6, 7, 15, 9, tzinfo=UTC)),
        ("2026-12-06T07:15:09Z", datetime(2026, 12, 6, 7, 15, 9, tzinfo=UTC)),
    ],
    ids=["without-microseconds", "with-an-offset", "with-z"],
)
def test_text_written_by_others_is_read_as_the_instant_it_names(
    engine: Engine, stored: str, expected: datetime
) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO instants (id, at) VALUES (1, :at)"), {"at": stored})
        read = connection.execute(select(instants.c.at)).scalar_one()

    assert read == expected
    assert read.tzinfo is UTC


def test_text_that_is_no_instant_is_an_error(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO instants (id, at) VALUES (1, 'yesterday')"))

        with pytest.raises(ValueError, match="yesterday"):
            connection.execute(select(instants.c.at)).scalar_one()

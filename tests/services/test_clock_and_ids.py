"""UTC normalisation of client datetimes, and time-ordered ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from app.services.clock import EARLIEST, LATEST, to_utc
from app.services.ids import uuid7
from app.services.names import random_name


def test_to_utc_keeps_the_instant() -> None:
    plus_two = datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))

    assert to_utc(plus_two) == datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
    assert to_utc(plus_two).tzinfo is UTC


def test_instants_outside_the_calendar_become_its_bounds() -> None:
    before_year_one = datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(minutes=3)))
    after_year_9999 = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1)))

    assert to_utc(before_year_one) == EARLIEST
    assert to_utc(after_year_9999) == LATEST


def test_uuid7_has_version_variant_and_time_order() -> None:
    ids = [uuid7() for _ in range(1000)]

    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {"specified in RFC 4122"}
    assert len(set(ids)) == 1000
    milliseconds = [i.int >> 80 for i in ids]
    assert milliseconds == sorted(milliseconds)
    assert abs(milliseconds[0] - datetime.now(UTC).timestamp() * 1000) < 60_000


def test_random_names_are_two_lowercase_words() -> None:
    names = {random_name() for _ in range(200)}

    assert all(len(name.split("-")) == 2 and name.islower() for name in names)
    assert len(names) > 100

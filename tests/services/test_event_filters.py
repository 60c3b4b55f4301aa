"""The event filter of /api/events/out, on plain records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.db.records import EventRecord
from app.services import event_filters
from app.services.event_filters import BACKFILL_LIMIT, UnsupportedFilter, parse_filter

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def clock_at_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # The records below are made when the tests are collected; a filter's default window
    # (the last 15 minutes) is counted from NOW, not from when a test happens to run.
    monkeypatch.setattr(event_filters, "utcnow", lambda: NOW)


def record(name: str = "prefect.task-run.Completed", **overrides: Any) -> EventRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "occurred": NOW,
        "event": name,
        "resource_id": "prefect.task-run.1",
        "resource": {"prefect.resource.id": "prefect.task-run.1"},
        "related": [
            {"prefect.resource.id": "prefect.flow-run.9", "prefect.resource.role": "flow-run"}
        ],
        "payload": {},
        "follows": None,
        "received": NOW,
        **overrides,
    }
    return EventRecord(**values)


@pytest.mark.parametrize(
    ("given", "matching", "not_matching"),
    [
        ({"event": {"name": ["a.b"]}}, record("a.b"), record("a.bc")),
        ({"event": {"prefix": ["a."]}}, record("a.x"), record("b.x")),
        ({"event": {"exclude_prefix": ["a."]}}, record("b.x"), record("a.x")),
        ({"event": {"exclude_name": ["a.b"]}}, record("a.c"), record("a.b")),
        (
            {"resource": {"id": ["prefect.task-run.1"]}},
            record(),
            record(resource_id="prefect.task-run.2"),
        ),
        (
            {"resource": {"id_prefix": ["prefect.task-run."]}},
            record(),
            record(resource_id="prefect.flow-run.1"),
        ),
        ({"related": {"role": ["flow-run"]}}, record(), record(related=[])),
        ({"related": {"id": ["prefect.flow-run.9"]}}, record(), record(related=[])),
        ({"any_resource": {"id": ["prefect.flow-run.9"]}}, record(), record(related=[])),
        (
            {"occurred": {"since": (NOW - timedelta(seconds=1)).isoformat()}},
            record(),
            record(occurred=NOW - timedelta(seconds=2)),
        ),
        (
            {"occurred": {"until": (NOW + timedelta(seconds=1)).isoformat()}},
            record(),
            record(occurred=NOW + timedelta(seconds=2)),
        ),
    ],
)  # fmt: skip
def test_each_criterion(
    given: dict[str, Any], matching: EventRecord, not_matching: EventRecord
) -> None:
    event_filter = parse_filter(given)

    assert event_filter.matches(matching)
    assert not event_filter.matches(not_matching)


def test_ids_and_empty_lists() -> None:
    wanted = record()

    assert parse_filter({"id": {"id": [str(wanted.id)]}}).matches(wanted)
    assert not parse_filter({"id": {"id": [str(uuid.uuid4())]}}).matches(wanted)
    assert parse_filter({"id": {"id": []}, "event": {"name": []}}).matches(wanted)


def test_every_part_must_match() -> None:
    event_filter = parse_filter({"event": {"prefix": ["prefect."]}, "related": {"role": ["flow"]}})

    assert not event_filter.matches(record())


def test_backfill_goes_back_at_most_fifteen_minutes() -> None:
    long_ago = parse_filter({"occurred": {"since": "2020-01-01T00:00:00Z"}})
    recent = parse_filter({"occurred": {"since": (NOW - timedelta(minutes=1)).isoformat()}})

    assert long_ago.backfill_since(NOW) == NOW - BACKFILL_LIMIT
    assert recent.backfill_since(NOW) == NOW - timedelta(minutes=1)


def test_a_live_event_older_than_fifteen_minutes_does_not_match_either() -> None:
    long_ago = parse_filter({"occurred": {"since": "2020-01-01T00:00:00Z"}})

    assert not long_ago.matches(record(occurred=NOW - timedelta(minutes=30)))
    assert long_ago.matches(record(occurred=NOW - timedelta(minutes=14)))


FLOW_RUN = {"prefect.resource.id": "prefect.flow-run.9", "prefect.resource.role": "flow-run"}
TAG = {"prefect.resource.id": "prefect.tag.a", "prefect.resource.role": "tag"}


@pytest.mark.parametrize(
    ("given", "matches"),
    [
        ({"related": {"id": ["prefect.flow-run.9"], "role": ["flow-run"]}}, True),
        # The id is one related resource's and the role another's.
        ({"related": {"id": ["prefect.flow-run.9"], "role": ["tag"]}}, False),
        ({"related": [{"id": ["prefect.flow-run.9"]}, {"role": ["tag"]}]}, True),
        ({"related": [{"id": ["prefect.flow-run.9"]}, {"role": ["flow"]}]}, False),
        ({"related": []}, True),
        ({"any_resource": {"id": ["prefect.task-run.1"], "id_prefix": ["prefect.task"]}}, True),
        # The id is the event's own resource's and the prefix a related one's.
        ({"any_resource": {"id": ["prefect.task-run.1"], "id_prefix": ["prefect.tag."]}}, False),
        ({"any_resource": [{"id": ["prefect.task-run.1"]}, {"id_prefix": ["prefect.tag."]}]}, True),
    ],
)
def test_a_resource_criterion_is_met_by_one_resource(given: dict[str, Any], matches: bool) -> None:
    event = record(related=[FLOW_RUN, TAG])

    assert parse_filter(given).matches(event) is matches


def test_resource_distinct_false_asks_for_nothing() -> None:
    given = {"resource": {"id": ["prefect.task-run.1"], "distinct": False}}

    assert parse_filter(given).matches(record())
    with pytest.raises(UnsupportedFilter):
        parse_filter({"resource": {"distinct": True}})


@pytest.mark.parametrize(
    "given",
    [{"text": {"query": "x"}}, {"resource": {"labels": {"a": "b"}}}, {"something": 1}],
)
def test_what_cannot_be_applied_is_refused(given: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedFilter):
        parse_filter(given)


def test_nulls_are_no_criteria() -> None:
    assert parse_filter({"text": None, "related": None, "resource": {"labels": None}}).matches(
        record()
    )


@pytest.mark.parametrize(
    "criterion",
    [{"id": None, "role": None}, {"id": [], "role": []}, [{}, {"role": None}]],
    ids=["nulls", "empty-lists", "a-list-of-empty-criteria"],
)
def test_a_related_criterion_of_no_parts_asks_for_no_related_resource(criterion: Any) -> None:
    event_filter = parse_filter({"related": criterion})

    assert event_filter.matches(record(related=[]))

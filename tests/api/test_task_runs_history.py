"""POST /task_runs/history through HTTP, on every database backend."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.support.api import assert_validation_error, create_run, set_state
from tests.support.queries import HISTORY, at, new_run, task_runs
from tests.support.sockets import send_events, task_run_event

HOUR = 3600


def history(client: TestClient, start: float, end: float, seconds: float, **body: Any) -> Any:
    """The history from at(start) to at(end) minutes in intervals of `seconds`."""
    response = client.post(
        HISTORY,
        json={
            "history_start": at(start),
            "history_end": at(end),
            "history_interval_seconds": seconds,
            **body,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


class TestTaskRunHistory:
    def test_intervals_reach_the_one_that_holds_the_end(self, client: TestClient) -> None:
        assert len(history(client, 0, 14 * 24 * 60, 24 * HOUR)) == 14
        assert len(history(client, 0, 10 * 24 * 60, 6 * HOUR)) == 40
        assert len(history(client, 0, 61, HOUR)) == 2
        buckets = history(client, 0, 90, HOUR)
        assert [(b["interval_start"], b["interval_end"]) for b in buckets] == [
            (at(0), at(60)),
            (at(60), at(120)),
        ]
        assert all(bucket["states"] == [] for bucket in buckets)

    def test_at_most_500_intervals_and_none_for_an_empty_range(self, client: TestClient) -> None:
        assert len(history(client, 0, 10 * 24 * 60, 60)) == 500
        assert history(client, 10, 10, 60) == []
        assert history(client, 10, 0, 60) == []

    def test_a_run_counts_in_the_interval_of_its_expected_start(self, client: TestClient) -> None:
        # Interval edges: a run exactly at an interval's start belongs to it, not the one before.
        for minutes in (0, 59.999, 60, 60, 119, 120):
            new_run(client, scheduled_minutes=minutes)

        buckets = history(client, 0, 120, HOUR)

        counts = [[state["count_runs"] for state in bucket["states"]] for bucket in buckets]
        assert counts == [[2], [3]]
        (state,) = buckets[0]["states"]
        assert (state["state_type"], state["state_name"]) == ("SCHEDULED", "Scheduled")

    def test_states_are_counted_separately_and_sums_are_in_seconds(
        self, client: TestClient
    ) -> None:
        scheduled = new_run(client, scheduled_minutes=1)
        late = new_run(client, scheduled_minutes=2)
        set_state(client, late["id"], "PENDING")
        # A run expected long ago and not started: late by the time since.
        (bucket,) = history(client, 0, 60, HOUR)

        by_name = {state["state_name"]: state for state in bucket["states"]}
        assert set(by_name) == {"Pending", "Scheduled"}
        assert by_name["Scheduled"]["count_runs"] == 1
        assert by_name["Pending"]["sum_estimated_run_time"] == 0.0
        lateness = by_name["Pending"]["sum_estimated_lateness"]
        assert lateness == pytest.approx(
            client.get(f"/api/task_runs/{late['id']}").json()["estimated_start_time_delta"],
            abs=5,
        )
        assert lateness > 300 * 24 * HOUR
        assert scheduled["id"] != late["id"]

    def test_running_time_is_summed(self, client: TestClient) -> None:
        runs = [new_run(client, scheduled_minutes=m) for m in (1, 2)]
        for run in runs:
            set_state(client, run["id"], "RUNNING", force=True)
            set_state(client, run["id"], "COMPLETED")
        totals = [client.get(f"/api/task_runs/{run['id']}").json() for run in runs]

        (bucket,) = history(client, 0, 60, HOUR)

        (state,) = bucket["states"]
        assert (state["state_type"], state["count_runs"]) == ("COMPLETED", 2)
        assert state["sum_estimated_run_time"] == pytest.approx(
            sum(run["total_run_time"] for run in totals), abs=1e-3
        )
        # Started after they were expected: lateness is how much later.
        assert state["sum_estimated_lateness"] == pytest.approx(
            sum(run["estimated_start_time_delta"] for run in totals), abs=1e-3
        )

    def test_a_negative_estimate_counts_as_zero_not_against_the_others(
        self, client: TestClient
    ) -> None:
        # Run times as clients report them in events: one of them from a clock gone wrong.
        expected = at(1)
        reported = [
            task_run_event(
                str(uuid.uuid4()),
                "COMPLETED",
                task_run={
                    "task_key": "k",
                    "dynamic_key": str(uuid.uuid4()),
                    "expected_start_time": expected,
                    "total_run_time": run_time,
                },
            )
            for run_time in (-10.0, 60.0)
        ]
        send_events(client, *reported)

        (bucket,) = history(client, 0, 60, HOUR)

        (state,) = bucket["states"]
        assert (state["count_runs"], state["sum_estimated_run_time"]) == (2, 60.0)

    def test_filters_apply(self, client: TestClient) -> None:
        new_run(client, scheduled_minutes=1, tags=["a"])
        new_run(client, scheduled_minutes=2)

        (bucket,) = history(client, 0, 60, HOUR, **task_runs(tags={"all_": ["a"]}))

        assert [state["count_runs"] for state in bucket["states"]] == [1]

    @pytest.mark.parametrize(
        ("body", "loc", "kind"),
        [
            ({"history_interval_seconds": 0.5}, ["body", "history_interval_seconds"], "minimum"),
            ({"history_start": None}, ["body", "history_start"], "type"),
            ({"history_end": "yesterday"}, ["body", "history_end"], "format"),
        ],
    )
    def test_bad_bodies_are_422(
        self, client: TestClient, body: dict[str, Any], loc: list[str], kind: str
    ) -> None:
        complete = {
            "history_start": at(0),
            "history_end": at(60),
            "history_interval_seconds": 60,
        }

        response = client.post(HISTORY, json=complete | body)

        assert_validation_error(response, loc, kind)

    def test_interval_under_a_second_has_prefects_words(self, client: TestClient) -> None:
        body = {"history_start": at(0), "history_end": at(60), "history_interval_seconds": 0}

        detail = client.post(HISTORY, json=body).json()["detail"]

        assert detail[0]["msg"] == "History interval must not be less than 1 second."

    def test_missing_fields_are_422(self, client: TestClient) -> None:
        assert_validation_error(client.post(HISTORY, json={}), ["body", "history_start"], "missing")
        assert_validation_error(client.post(HISTORY), ["body"], "missing")

    def test_the_ends_of_time(self, client: TestClient) -> None:
        new_run(client, scheduled_minutes=0)
        body = {
            "history_start": "9999-12-31T00:00:00Z",
            "history_end": "9999-12-31T23:59:59Z",
            "history_interval_seconds": 315537897600,
        }

        response = client.post(HISTORY, json=body)

        assert response.status_code == 200
        assert len(response.json()) == 1

    def test_a_run_at_the_latest_instant_counts_in_the_interval_that_holds_it(
        self, client: TestClient
    ) -> None:
        latest = "9999-12-31T23:59:59.999999Z"
        scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": latest}}
        run = create_run(client, state=scheduled)
        assert run["expected_start_time"] == latest
        # The one interval, a day from midnight, would end past the latest instant.
        body = {
            "history_start": "9999-12-31T00:00:00Z",
            "history_end": "9999-12-31T12:00:00Z",
            "history_interval_seconds": 86400,
        }

        [interval] = client.post(HISTORY, json=body).json()

        assert [state["count_runs"] for state in interval["states"]] == [1]

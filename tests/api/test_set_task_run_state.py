"""POST /task_runs/{id}/set_state through HTTP on every database backend: the policy that
applies, each orchestration rule on the transitions it fires on and one it must not fire on,
the bookkeeping of every written state, and the answers.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.db.database import Database
from app.services.clock import LATEST
from tests.support.api import (
    CREATE,
    assert_validation_error,
    create_run,
    parse_time,
    read_run,
    set_state,
    states_of,
    wide_text,
)
from tests.support.databases import record_writes
from tests.support.sockets import EVENTS_IN, authenticated, eventually, task_run_event

TERMINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
PERSISTED = {"storage_key": "/results/abc", "serializer": {"type": "pickle"}}


def decided(response: Any) -> tuple[int, str, str | None, str | None]:
    """(HTTP status, orchestration status, written-or-current state type, its name)."""
    body = response.json()
    state = body["state"] or {}
    return response.status_code, body["status"], state.get("type"), state.get("name")


def reason(response: Any) -> str:
    detail: str = response.json()["details"]["reason"]
    return detail


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def run_in(client: TestClient, *transitions: str, **create_fields: Any) -> dict[str, Any]:
    """A new run taken through `transitions` (each must be written); returns the run."""
    run = create_run(client, **create_fields)
    for state_type in transitions:
        response = set_state(client, run["id"], state_type)
        assert response.status_code == 201, response.text
    return read_run(client, run["id"])


def recorded_from_an_event(
    client: TestClient, run_id: str, state_type: str, *, occurred: datetime, **state: Any
) -> dict[str, Any]:
    """The run once a client's event, stamped `occurred` by the client's clock, has given it
    a new state of `state_type`.
    """
    event = task_run_event(run_id, state_type, occurred=occurred, **state)
    with authenticated(client, EVENTS_IN) as socket:
        socket.send_json(event)
        eventually(lambda: read_run(client, run_id)["state_id"] == event["id"])
    return read_run(client, run_id)


def cache_a_result(client: TestClient, cache_key: str, **details: Any) -> dict[str, Any]:
    """A run that completed with `data` under `cache_key`; returns its COMPLETED state."""
    run = run_in(client, "RUNNING", task_key=f"cached-{uuid.uuid4().hex[:8]}")
    response = set_state(
        client,
        run["id"],
        "COMPLETED",
        message="done",
        data=PERSISTED,
        state_details={"cache_key": cache_key, **details},
    )
    assert decided(response)[:2] == (201, "ACCEPT"), response.text
    state: dict[str, Any] = response.json()["state"]
    return state


class TestSetTaskRunState:
    """The answer and the written state of an ordinary accepted transition."""

    def test_an_accepted_state_is_written_and_answered_with_201(self, client: TestClient) -> None:
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", message="started", data=[1])

        assert response.status_code == 201
        body = response.json()
        assert (body["status"], body["details"]) == ("ACCEPT", {"type": "accept_details"})
        state = body["state"]
        assert (state["type"], state["name"], state["message"], state["data"]) == (
            "RUNNING",
            "Running",
            "started",
            [1],
        )
        assert state["state_details"]["task_run_id"] == run["id"]
        assert parse_time(state["timestamp"]) > parse_time(run["state"]["timestamp"])
        read = read_run(client, run["id"])
        assert (read["state_id"], read["state"]) == (state["id"], state)
        assert [s["id"] for s in states_of(client, run["id"])] == [run["state_id"], state["id"]]

    def test_a_given_name_is_kept(self, client: TestClient) -> None:
        run = create_run(client)

        response = set_state(client, run["id"], "PENDING", name="Submitting")

        assert decided(response) == (201, "ACCEPT", "PENDING", "Submitting")
        assert read_run(client, run["id"])["state_name"] == "Submitting"

    def test_the_runs_ids_replace_those_in_the_details(self, client: TestClient) -> None:
        flow_run_id = str(uuid.uuid4())
        run = create_run(client, flow_run_id=flow_run_id)
        details = {"task_run_id": str(uuid.uuid4()), "flow_run_id": None, "unknown": 1}

        state = set_state(client, run["id"], "RUNNING", state_details=details).json()["state"]

        assert state["state_details"]["task_run_id"] == run["id"]
        assert state["state_details"]["flow_run_id"] == flow_run_id
        assert "unknown" not in state["state_details"]

    def test_unknown_top_level_keys_are_ignored(self, client: TestClient) -> None:
        run = create_run(client)

        response = client.post(
            f"{CREATE}{run['id']}/set_state",
            json={"state": {"type": "RUNNING"}, "force": False, "orchestration": "please"},
        )

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")

    def test_an_unknown_run_is_404(self, client: TestClient) -> None:
        response = set_state(client, str(uuid.uuid4()), "RUNNING")

        assert response.status_code == 404
        assert response.json() == {"detail": "Task run not found"}

    @pytest.mark.parametrize(
        ("body", "loc", "error_type"),
        [
            ({}, ["body", "state"], "missing"),
            ({"state": {"type": "GONE"}}, ["body", "state", "type"], "enum"),
            ({"state": {"type": "RUNNING", "timestamp": "x"}}, ["body", "state", "timestamp"],
             "extra_forbidden"),
            ({"state": {"type": "RUNNING"}, "force": "yes"}, ["body", "force"], "type"),
            (
                {"state": {"type": "COMPLETED", "state_details": {"cache_key": "k" * 2001}}},
                ["body", "state", "state_details", "cache_key"],
                "maxLength",
            ),
            (
                {"state": {"type": "RUNNING", "state_details": {"cache_key": "a\u0000b"}}},
                ["body", "state", "state_details", "cache_key"],
                "pattern",
            ),
            (
                {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "later"}}},
                ["body", "state", "state_details", "scheduled_time"],
                "format",
            ),
        ],
    )  # fmt: skip
    def test_invalid_proposals_are_422_and_change_nothing(
        self, client: TestClient, body: dict[str, Any], loc: list[Any], error_type: str
    ) -> None:
        run = create_run(client)

        response = client.post(f"{CREATE}{run['id']}/set_state", json=body)

        assert_validation_error(response, loc, error_type)
        assert len(states_of(client, run["id"])) == 1

    def test_an_id_that_is_not_a_uuid_is_422(self, client: TestClient) -> None:
        assert_validation_error(set_state(client, "nope", "RUNNING"), ["path", "id"], "format")

    @pytest.mark.parametrize("levels", [63, 300, 100_000])
    def test_data_nested_too_deep_to_read_back_is_422(
        self, client: TestClient, levels: int
    ) -> None:
        run = create_run(client)
        # Written out by hand: the JSON encoder of the test client recurses.
        data = "[" * levels + '"leaf"' + "]" * levels
        body = '{"state": {"type": "COMPLETED", "data": ' + data + "}}"

        response = client.post(
            f"{CREATE}{run['id']}/set_state",
            content=body.encode(),
            headers={"content-type": "application/json"},
        )

        assert_validation_error(response, ["body"], "x-max-depth")
        assert len(states_of(client, run["id"])) == 1

    def test_data_nested_up_to_the_limit_is_stored_and_read_back(self, client: TestClient) -> None:
        run = create_run(client)
        data: Any = "leaf"
        for _ in range(62):  # the body and `state` are the first two levels
            data = [data]

        response = set_state(client, run["id"], "COMPLETED", data=data)

        assert response.status_code == 201
        assert read_run(client, run["id"])["state"]["data"] == data

    def test_a_cache_key_of_2000_characters_is_accepted_and_cached(
        self, client: TestClient
    ) -> None:
        key = "k" * 2000
        cache_a_result(client, key)
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": key})

        assert decided(response) == (201, "REJECT", "COMPLETED", "Cached")


class TestPolicySelection:
    """Which rules decide: deferred states the background-task ones, `force` none, else core."""

    def test_force_writes_the_state_as_proposed(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"retries": 3})

        failed = set_state(client, run["id"], "FAILED", force=True)
        crashed = set_state(client, run["id"], "CRASHED", force=True)

        assert decided(failed) == (201, "ACCEPT", "FAILED", "Failed")
        assert decided(crashed) == (201, "ACCEPT", "CRASHED", "Crashed")

    def test_force_leaves_a_completed_run_with_persisted_data(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")
        set_state(client, run["id"], "COMPLETED", data=PERSISTED)

        unforced = set_state(client, run["id"], "RUNNING")
        forced = set_state(client, run["id"], "RUNNING", force=True)

        assert decided(unforced)[:2] == (200, "REJECT")
        assert decided(forced) == (201, "ACCEPT", "RUNNING", "Running")

    def test_force_neither_reads_nor_fills_the_cache(self, client: TestClient) -> None:
        cache_a_result(client, "forced")
        run = create_run(client)
        details = {"cache_key": "forced-too"}

        running = set_state(
            client, run["id"], "RUNNING", force=True, state_details={"cache_key": "forced"}
        )
        set_state(client, run["id"], "COMPLETED", force=True, state_details=details)
        other = create_run(client, task_key="other")
        lookup = set_state(client, other["id"], "RUNNING", state_details=details)

        assert decided(running) == (201, "ACCEPT", "RUNNING", "Running")
        assert decided(lookup) == (201, "ACCEPT", "RUNNING", "Running")

    def test_a_deferred_state_gets_the_background_rules_even_when_forced(
        self, client: TestClient
    ) -> None:
        run = run_in(client, "RUNNING")

        response = set_state(
            client, run["id"], "PENDING", force=True, state_details={"deferred": True}
        )

        assert decided(response) == (200, "ABORT", "RUNNING", "Running")
        assert reason(response) == (
            "This run is in a RUNNING state and cannot transition to a PENDING state."
        )

    def test_without_deferred_the_same_proposal_is_accepted(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")

        response = set_state(client, run["id"], "PENDING")

        assert decided(response) == (201, "ACCEPT", "PENDING", "Pending")


class TestCacheRetrieval:
    """Any -> RUNNING with a cache key: the newest unexpired cached COMPLETED state."""

    def test_a_cached_state_replaces_the_running_proposal(self, client: TestClient) -> None:
        cached = cache_a_result(client, "key-1")
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "key-1"})

        assert decided(response) == (201, "REJECT", "COMPLETED", "Cached")
        assert reason(response) == "Retrieved state from cache"
        state = response.json()["state"]
        assert state["id"] != cached["id"]
        assert (state["message"], state["data"]) == ("done", PERSISTED)
        assert state["state_details"]["cache_key"] == "key-1"
        assert state["state_details"]["task_run_id"] == run["id"]
        read = read_run(client, run["id"])
        assert (read["state_type"], read["state_name"], read["run_count"]) == (
            "COMPLETED",
            "Cached",
            0,
        )
        assert read["start_time"] == read["end_time"] == state["timestamp"]

    def test_a_key_of_2000_wide_characters_is_cached_and_found(self, client: TestClient) -> None:
        # 8000 bytes in UTF-8 that do not compress: more than a B-tree entry on PostgreSQL
        # can hold.
        key = wide_text(2000)
        cached = cache_a_result(client, key)
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": key})

        assert decided(response) == (201, "REJECT", "COMPLETED", "Cached")
        assert response.json()["state"]["data"] == cached["data"]

    def test_the_newest_entry_wins(self, client: TestClient) -> None:
        cache_a_result(client, "key-2")
        newest = cache_a_result(client, "key-2")
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "key-2"})

        assert response.json()["state"]["timestamp"] > newest["timestamp"]
        assert states_of(client, newest["state_details"]["task_run_id"])[-1]["id"] == newest["id"]

    def test_an_unexpired_entry_is_used(self, client: TestClient) -> None:
        cache_a_result(client, "key-3", cache_expiration=in_seconds(3600))
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "key-3"})

        assert decided(response)[:3] == (201, "REJECT", "COMPLETED")

    @pytest.mark.parametrize(
        "details",
        [
            {"cache_key": "expired"},
            {"cache_key": "other-key"},
            {"cache_key": "fresh", "refresh_cache": True},
            {},
        ],
        ids=["expired", "other-key", "refresh-cache", "no-key"],
    )
    def test_does_not_fire_without_a_usable_entry(
        self, client: TestClient, details: dict[str, Any]
    ) -> None:
        cache_a_result(client, "expired", cache_expiration=in_seconds(-1))
        cache_a_result(client, "fresh")
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details=details)

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")

    def test_only_running_proposals_look_the_key_up(self, client: TestClient) -> None:
        cache_a_result(client, "key-4")
        run = create_run(client)

        response = set_state(client, run["id"], "PENDING", state_details={"cache_key": "key-4"})

        assert decided(response) == (201, "ACCEPT", "PENDING", "Pending")


class TestCacheInsertion:
    """Any -> COMPLETED with a cache key: the written state is cached until it expires."""

    def test_a_completed_state_with_a_key_is_cached(self, client: TestClient) -> None:
        cached = cache_a_result(client, "inserted", cache_expiration=in_seconds(60))
        run = create_run(client)

        answer = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "inserted"})

        assert answer.json()["state"]["data"] == cached["data"]
        assert (
            answer.json()["state"]["state_details"]["cache_expiration"]
            == (cached["state_details"]["cache_expiration"])
        )

    def test_other_states_with_a_key_are_not_cached(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")
        set_state(client, run["id"], "FAILED", state_details={"cache_key": "failed"})
        other = create_run(client, task_key="other")

        response = set_state(client, other["id"], "RUNNING", state_details={"cache_key": "failed"})

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")

    def test_a_rejected_completion_is_not_cached(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")
        set_state(client, run["id"], "COMPLETED", data=PERSISTED)
        set_state(client, run["id"], "COMPLETED", state_details={"cache_key": "rejected"})
        other = create_run(client, task_key="other")

        response = set_state(
            client, other["id"], "RUNNING", state_details={"cache_key": "rejected"}
        )

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")


class TestHandleTaskTerminalStateTransitions:
    """Terminal -> any: no CANCELLING/PAUSED/CRASHED, no leaving a persisted result."""

    @pytest.mark.parametrize("terminal", TERMINAL)
    @pytest.mark.parametrize("proposed", ["CANCELLING", "PAUSED", "CRASHED"])
    def test_a_terminal_run_cannot_become_cancelling_paused_or_crashed(
        self, client: TestClient, terminal: str, proposed: str
    ) -> None:
        run = create_run(client, state={"type": terminal})

        response = set_state(client, run["id"], proposed)

        assert decided(response) == (200, "ABORT", terminal, terminal.title())
        assert reason(response) == f"Run is already {terminal}."
        assert len(states_of(client, run["id"])) == 1

    @pytest.mark.parametrize("proposed", ["RUNNING", "PENDING", "FAILED", "COMPLETED"])
    def test_a_completed_run_with_persisted_data_stays(
        self, client: TestClient, proposed: str
    ) -> None:
        run = run_in(client, "RUNNING")
        completed = set_state(client, run["id"], "COMPLETED", data=PERSISTED).json()["state"]

        response = set_state(client, run["id"], proposed)

        assert decided(response) == (200, "REJECT", "COMPLETED", "Completed")
        assert reason(response) == "This run is already completed."
        assert response.json()["state"] == completed
        assert states_of(client, run["id"])[-1] == completed

    @pytest.mark.parametrize(
        "data", [None, {}, {"type": "unpersisted"}, {"type": "unpersisted", "k": 1}]
    )
    def test_a_completed_run_without_persisted_data_runs_again_from_a_count_of_one(
        self, client: TestClient, data: Any
    ) -> None:
        run = run_in(client, "RUNNING", "RUNNING")
        set_state(client, run["id"], "COMPLETED", data=data)

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")
        read = read_run(client, run["id"])
        assert read["run_count"] == 1
        assert read["end_time"] is None

    @pytest.mark.parametrize("terminal", TERMINAL)
    @pytest.mark.parametrize("proposed", ["PENDING", "SCHEDULED"])
    def test_leaving_for_a_waiting_state_stores_the_count_started_afresh(
        self, client: TestClient, terminal: str, proposed: str
    ) -> None:
        run = run_in(client, "RUNNING", "RUNNING", terminal)
        assert run["run_count"] == 2

        response = set_state(client, run["id"], proposed)

        assert decided(response)[:3] == (201, "ACCEPT", proposed)
        assert read_run(client, run["id"])["run_count"] == 0

    def test_retries_start_afresh_after_leaving_a_terminal_state(self, client: TestClient) -> None:
        run = run_in(
            client,
            "RUNNING",
            "FAILED",
            empirical_policy={"retries": 1, "retry_delay": 0},
        )
        # FAILED with its one retry still to come was itself a retry: the run is scheduled.
        assert run["state_type"] == "SCHEDULED"
        set_state(client, run["id"], "RUNNING")
        set_state(client, run["id"], "FAILED")
        assert read_run(client, run["id"])["state_type"] == "FAILED"

        set_state(client, run["id"], "PENDING")
        running = set_state(client, run["id"], "RUNNING")
        failed = set_state(client, run["id"], "FAILED")

        assert decided(running) == (201, "ACCEPT", "RUNNING", "Running")
        assert decided(failed) == (201, "REJECT", "SCHEDULED", "AwaitingRetry")

    def test_leaving_for_another_terminal_state_keeps_the_count(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", "FAILED")

        response = set_state(client, run["id"], "COMPLETED")

        assert decided(response) == (201, "ACCEPT", "COMPLETED", "Completed")
        assert read_run(client, run["id"])["run_count"] == 1

    def test_does_not_fire_on_a_run_that_is_not_terminal(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")

        response = set_state(client, run["id"], "CRASHED")

        assert decided(response) == (201, "ACCEPT", "CRASHED", "Crashed")


class TestCopyScheduledTime:
    """SCHEDULED -> PENDING: the pending state keeps the scheduled time."""

    def test_the_scheduled_time_is_copied(self, client: TestClient) -> None:
        due = "2020-01-02T03:04:05Z"
        run = create_run(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": due}}
        )

        state = set_state(client, run["id"], "PENDING").json()["state"]

        assert state["state_details"]["scheduled_time"] == due

    def test_a_proposed_time_is_kept(self, client: TestClient) -> None:
        run = create_run(client, state={"type": "SCHEDULED"})
        own = "2021-01-01T00:00:00Z"

        state = set_state(
            client, run["id"], "PENDING", state_details={"scheduled_time": own}
        ).json()["state"]

        assert state["state_details"]["scheduled_time"] == own

    def test_does_not_fire_from_pending(self, client: TestClient) -> None:
        run = create_run(client)

        state = set_state(client, run["id"], "PENDING", name="Again").json()["state"]

        assert state["state_details"]["scheduled_time"] is None


class TestWaitForScheduledTime:
    """SCHEDULED or PENDING -> RUNNING: not before the scheduled time."""

    def test_a_future_scheduled_run_must_wait(self, client: TestClient) -> None:
        run = create_run(
            client,
            state={"type": "SCHEDULED", "state_details": {"scheduled_time": in_seconds(100)}},
        )

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response) == (200, "WAIT", "SCHEDULED", "Scheduled")
        details = response.json()["details"]
        assert details["type"] == "wait_details"
        assert details["reason"] == "Scheduled time is in the future"
        assert 99 <= details["delay_seconds"] <= 100
        assert len(states_of(client, run["id"])) == 1

    def test_a_pending_run_waits_for_its_copied_time(self, client: TestClient) -> None:
        run = create_run(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": in_seconds(50)}}
        )
        set_state(client, run["id"], "PENDING")

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response)[:3] == (200, "WAIT", "PENDING")

    def test_a_due_run_starts(self, client: TestClient) -> None:
        run = create_run(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": in_seconds(-5)}}
        )

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")

    def test_does_not_fire_from_other_states(self, client: TestClient) -> None:
        run = create_run(
            client,
            state={"type": "PAUSED", "state_details": {"scheduled_time": in_seconds(100)}},
        )

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Running")


class TestRetryFailedTasks:
    """RUNNING -> FAILED with retries left: scheduled again as AwaitingRetry."""

    def test_a_failure_with_retries_left_is_scheduled_for_a_retry(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"retries": 1, "retry_delay": 30})
        before = datetime.now(UTC)

        response = set_state(client, run["id"], "FAILED", message="boom", data={"error": 1})

        assert decided(response) == (201, "REJECT", "SCHEDULED", "AwaitingRetry")
        assert reason(response) == "Retrying"
        state = response.json()["state"]
        assert (state["message"], state["data"]) == ("boom", {"error": 1})
        due = parse_time(state["state_details"]["scheduled_time"])
        assert before + timedelta(seconds=29) < due < datetime.now(UTC) + timedelta(seconds=31)
        read = read_run(client, run["id"])
        assert read["next_scheduled_start_time"] == state["state_details"]["scheduled_time"]
        assert read["end_time"] is None

    def test_the_retry_runs_as_retrying_and_the_last_failure_stands(
        self, client: TestClient
    ) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"retries": 1})
        set_state(client, run["id"], "FAILED")

        retrying = set_state(client, run["id"], "RUNNING")
        failed = set_state(client, run["id"], "FAILED")

        assert decided(retrying) == (201, "ACCEPT", "RUNNING", "Retrying")
        assert decided(failed) == (201, "ACCEPT", "FAILED", "Failed")
        assert read_run(client, run["id"])["run_count"] == 2
        assert [s["name"] for s in states_of(client, run["id"])] == [
            "Pending", "Running", "AwaitingRetry", "Retrying", "Failed",
        ]  # fmt: skip

    def test_a_list_of_delays_is_used_in_turn(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"retries": 2, "retry_delay": [0, 100]})

        first = set_state(client, run["id"], "FAILED").json()["state"]
        set_state(client, run["id"], "RUNNING")
        second = set_state(client, run["id"], "FAILED").json()["state"]

        def delay(state: dict[str, Any]) -> float:
            due = parse_time(state["state_details"]["scheduled_time"])
            return (due - parse_time(state["timestamp"])).total_seconds()

        assert (first["name"], delay(first)) == ("AwaitingRetry", 0)
        assert (second["name"], delay(second)) == ("AwaitingRetry", 100)

    def test_a_jittered_delay_stays_within_its_bounds(self, client: TestClient) -> None:
        policy = {"retries": 1, "retry_delay": 5, "retry_jitter_factor": 0.5}
        run = run_in(client, "RUNNING", empirical_policy=policy)

        state = set_state(client, run["id"], "FAILED").json()["state"]

        due = parse_time(state["state_details"]["scheduled_time"])
        delay = (due - parse_time(state["timestamp"])).total_seconds()
        assert 3.1 <= delay <= 7.5

    def test_a_huge_delay_schedules_at_the_latest_time(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"retries": 1, "retry_delay": 1e300})

        state = set_state(client, run["id"], "FAILED").json()["state"]

        assert state["state_details"]["scheduled_time"].startswith("9999-12-31T23:59:59")

    @pytest.mark.parametrize(
        ("retry_delay", "due"),
        [
            (10**400, "9999-12-31T23:59:59.999999Z"),
            ([10**400], "9999-12-31T23:59:59.999999Z"),
            (-(10**400), "0001-01-01T00:00:00Z"),
        ],
        ids=["number", "list", "negative"],
    )
    def test_a_delay_too_big_for_a_float_schedules_at_the_nearest_bound(
        self, client: TestClient, retry_delay: Any, due: str
    ) -> None:
        policy = {"retries": 2, "retry_delay": retry_delay}
        run = run_in(client, "RUNNING", empirical_policy=policy)

        response = set_state(client, run["id"], "FAILED")

        assert decided(response) == (201, "REJECT", "SCHEDULED", "AwaitingRetry")
        assert response.json()["state"]["state_details"]["scheduled_time"] == due

    @pytest.mark.parametrize(
        ("policy", "details"),
        [
            ({"retries": 1}, {"retriable": False}),
            ({"retries": 0}, {}),
            ({"retries": None}, {}),
            ({"retries": -1}, {}),
        ],
        ids=["not-retriable", "no-retries", "null-retries", "negative-retries"],
    )
    def test_does_not_retry_without_a_retry_left(
        self, client: TestClient, policy: dict[str, Any], details: dict[str, Any]
    ) -> None:
        run = run_in(client, "RUNNING", empirical_policy=policy)

        response = set_state(client, run["id"], "FAILED", state_details=details)

        assert decided(response) == (201, "ACCEPT", "FAILED", "Failed")

    @pytest.mark.parametrize(("start", "proposed"), [("PENDING", "FAILED"), ("RUNNING", "CRASHED")])
    def test_does_not_fire_on_other_failures(
        self, client: TestClient, start: str, proposed: str
    ) -> None:
        run = create_run(client, state={"type": start}, empirical_policy={"retries": 3})

        response = set_state(client, run["id"], proposed)

        assert decided(response) == (201, "ACCEPT", proposed, proposed.title())

    def test_the_deprecated_max_retries_counts(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", empirical_policy={"max_retries": 1})

        response = set_state(client, run["id"], "FAILED")

        assert decided(response) == (201, "REJECT", "SCHEDULED", "AwaitingRetry")


class TestRenameReruns:
    """Any -> RUNNING of a run that ran before: "Retrying" after AwaitingRetry, else "Rerunning"."""

    def test_running_again_is_a_rerun(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Rerunning")
        assert read_run(client, run["id"])["run_count"] == 2

    def test_a_given_name_is_replaced_too(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING", "PENDING")

        response = set_state(client, run["id"], "RUNNING", name="Going")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Rerunning")

    def test_the_first_run_keeps_its_name(self, client: TestClient) -> None:
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", name="Going")

        assert decided(response) == (201, "ACCEPT", "RUNNING", "Going")


class TestBackgroundTaskRules:
    """Deferred proposals: PreventPendingTransitions and CopyTaskParametersID on top."""

    def deferred(self, client: TestClient, run_id: str, state_type: str, **state: Any) -> Any:
        details = {"deferred": True, **state.pop("state_details", {})}
        return set_state(client, run_id, state_type, state_details=details, **state)

    @pytest.mark.parametrize("current", ["PENDING", "RUNNING", "CANCELLING", "CANCELLED"])
    def test_a_run_cannot_go_back_to_pending(self, client: TestClient, current: str) -> None:
        run = create_run(client, state={"type": current})

        response = self.deferred(client, run["id"], "PENDING")

        assert decided(response)[:3] == (200, "ABORT", current)
        assert reason(response) == (
            f"This run is in a {current} state and cannot transition to a PENDING state."
        )

    def test_a_pending_run_may_move_to_a_differently_named_pending_state(
        self, client: TestClient
    ) -> None:
        due = "2024-05-06T07:08:09Z"
        run = create_run(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": due}}
        )
        set_state(client, run["id"], "PENDING")

        response = self.deferred(client, run["id"], "PENDING", name="Submitting")

        assert decided(response) == (201, "ACCEPT", "PENDING", "Submitting")
        assert response.json()["state"]["state_details"]["scheduled_time"] == due

    def test_the_pending_state_keeps_its_deployment_concurrency_lease(
        self, client: TestClient
    ) -> None:
        held, other = str(uuid.uuid4()), str(uuid.uuid4())
        run = create_run(
            client,
            state={"type": "PENDING", "state_details": {"deployment_concurrency_lease_id": held}},
        )

        response = self.deferred(
            client,
            run["id"],
            "PENDING",
            name="Submitting",
            state_details={"deployment_concurrency_lease_id": other},
        )

        assert decided(response) == (201, "ACCEPT", "PENDING", "Submitting")
        assert response.json()["state"]["state_details"]["deployment_concurrency_lease_id"] == held

    def test_the_parameters_id_follows_the_run(self, client: TestClient) -> None:
        parameters_id = str(uuid.uuid4())
        run = create_run(
            client,
            state={
                "type": "SCHEDULED",
                "state_details": {"deferred": True, "task_parameters_id": parameters_id},
            },
        )

        pending = self.deferred(client, run["id"], "PENDING").json()["state"]
        running = self.deferred(client, run["id"], "RUNNING").json()["state"]

        assert pending["state_details"]["task_parameters_id"] == parameters_id
        assert running["state_details"]["task_parameters_id"] == parameters_id

    def test_the_core_rules_do_not_copy_the_parameters_id(self, client: TestClient) -> None:
        details = {"task_parameters_id": str(uuid.uuid4())}
        run = create_run(client, state={"type": "SCHEDULED", "state_details": details})

        pending = set_state(client, run["id"], "PENDING").json()["state"]

        assert pending["state_details"]["task_parameters_id"] is None

    def test_a_deferred_first_state_is_served_from_the_cache(self, client: TestClient) -> None:
        cache_a_result(client, "first")

        run = create_run(
            client,
            state={"type": "RUNNING", "state_details": {"deferred": True, "cache_key": "first"}},
        )

        assert (run["state_type"], run["state_name"], run["run_count"]) == (
            "COMPLETED",
            "Cached",
            0,
        )

    def test_a_deferred_first_completed_state_is_cached(self, client: TestClient) -> None:
        create_run(
            client,
            task_key="completed-at-creation",
            state={"type": "COMPLETED", "state_details": {"deferred": True, "cache_key": "born"}},
        )
        run = create_run(client)

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "born"})

        assert decided(response) == (201, "REJECT", "COMPLETED", "Cached")

    def test_an_ordinary_first_state_is_neither_cached_nor_served_from_the_cache(
        self, client: TestClient
    ) -> None:
        cache_a_result(client, "plain")
        served = create_run(
            client,
            task_key="t1",
            state={"type": "RUNNING", "state_details": {"cache_key": "plain"}},
        )
        create_run(
            client,
            task_key="t2",
            state={"type": "COMPLETED", "state_details": {"cache_key": "new"}},
        )
        run = create_run(client, task_key="t3")

        lookup = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "new"})

        assert served["state_type"] == "RUNNING"
        assert decided(lookup) == (201, "ACCEPT", "RUNNING", "Running")


class TestBookkeeping:
    """The run's fields derived from its history, after every written state."""

    def test_a_whole_life(self, client: TestClient) -> None:
        run = create_run(client)
        expected_start = run["expected_start_time"]

        running = set_state(client, run["id"], "RUNNING").json()["state"]
        time.sleep(0.05)
        read_running = read_run(client, run["id"])
        completed = set_state(client, run["id"], "COMPLETED").json()["state"]
        read_completed = read_run(client, run["id"])
        failed = set_state(client, run["id"], "FAILED", force=True).json()["state"]
        read_failed = read_run(client, run["id"])

        assert read_running["start_time"] == running["timestamp"]
        assert read_running["run_count"] == 1
        assert read_running["estimated_run_time"] >= 0.05
        assert read_running["total_run_time"] == 0
        assert read_completed["end_time"] == completed["timestamp"]
        ran = parse_time(completed["timestamp"]) - parse_time(running["timestamp"])
        assert read_completed["total_run_time"] == pytest.approx(ran.total_seconds(), abs=1e-6)
        assert read_completed["estimated_run_time"] == read_completed["total_run_time"]
        # A second terminal state keeps the first end time.
        assert read_failed["end_time"] == completed["timestamp"]
        assert read_failed["start_time"] == running["timestamp"]
        for read, state in (
            (read_running, running),
            (read_completed, completed),
            (read_failed, failed),
        ):
            assert (read["state_id"], read["state_type"], read["state_name"]) == (
                state["id"], state["type"], state["name"],
            )  # fmt: skip
            assert read["expected_start_time"] == expected_start
            assert read["updated"] == state["timestamp"]

    def test_running_again_adds_to_the_run_time(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")
        time.sleep(0.02)
        set_state(client, run["id"], "RUNNING")
        time.sleep(0.02)
        set_state(client, run["id"], "COMPLETED")

        states = states_of(client, run["id"])
        read = read_run(client, run["id"])

        ran = parse_time(states[-1]["timestamp"]) - parse_time(states[1]["timestamp"])
        assert read["total_run_time"] == pytest.approx(ran.total_seconds(), abs=1e-6)
        assert read["total_run_time"] >= 0.04
        assert read["run_count"] == 2

    def test_a_forced_running_state_counts_as_a_run(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")

        set_state(client, run["id"], "RUNNING", force=True)

        assert read_run(client, run["id"])["run_count"] == 2

    def test_the_start_time_is_set_once(self, client: TestClient) -> None:
        run = run_in(client, "RUNNING")
        first_start = read_run(client, run["id"])["start_time"]
        set_state(client, run["id"], "COMPLETED")

        set_state(client, run["id"], "RUNNING")

        assert read_run(client, run["id"])["start_time"] == first_start

    def test_a_terminal_state_without_a_start_sets_both(self, client: TestClient) -> None:
        run = create_run(client)

        state = set_state(client, run["id"], "CANCELLED").json()["state"]

        read = read_run(client, run["id"])
        assert read["start_time"] == read["end_time"] == state["timestamp"]
        assert read["run_count"] == 0

    def test_the_next_scheduled_start_follows_scheduled_states(self, client: TestClient) -> None:
        run = create_run(client)
        due = "2031-01-01T00:00:00Z"

        set_state(client, run["id"], "SCHEDULED", state_details={"scheduled_time": due})
        scheduled = read_run(client, run["id"])
        set_state(client, run["id"], "PENDING")
        pending = read_run(client, run["id"])

        assert scheduled["next_scheduled_start_time"] == due
        assert scheduled["expected_start_time"] == run["expected_start_time"]
        assert pending["next_scheduled_start_time"] is None

    def test_a_run_created_scheduled_expects_its_scheduled_time(self, client: TestClient) -> None:
        due = "2031-02-03T04:05:06Z"

        run = create_run(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": due}}
        )
        set_state(client, run["id"], "PENDING")

        assert read_run(client, run["id"])["expected_start_time"] == due

    def test_states_never_share_a_timestamp(self, client: TestClient) -> None:
        run = create_run(client)

        for _ in range(20):
            set_state(client, run["id"], "RUNNING")

        timestamps = [parse_time(state["timestamp"]) for state in states_of(client, run["id"])]
        assert timestamps == sorted(set(timestamps))


class TestAClientsClock:
    """A state recorded from a client's event bears the client's clock, which may be ahead of
    the server's: the rules still read the server's clock, and each new state is stamped after
    the current one (at the latest instant, when the current one is already there).
    """

    def test_a_run_waits_for_its_scheduled_time_by_the_servers_clock(
        self, client: TestClient
    ) -> None:
        run = create_run(client)
        recorded_from_an_event(
            client,
            run["id"],
            "SCHEDULED",
            occurred=datetime.now(UTC) + timedelta(hours=1),
            state_details={"scheduled_time": in_seconds(1800)},
        )

        response = set_state(client, run["id"], "RUNNING")

        assert decided(response)[:3] == (200, "WAIT", "SCHEDULED")
        assert 1790 <= response.json()["details"]["delay_seconds"] <= 1800

    def test_a_cached_result_is_served_until_it_expires_by_the_servers_clock(
        self, client: TestClient
    ) -> None:
        cache_a_result(client, "ahead", cache_expiration=in_seconds(600))
        run = create_run(client)
        ahead = recorded_from_an_event(
            client, run["id"], "PENDING", occurred=datetime.now(UTC) + timedelta(hours=1)
        )

        response = set_state(client, run["id"], "RUNNING", state_details={"cache_key": "ahead"})

        assert decided(response) == (201, "REJECT", "COMPLETED", "Cached")
        cached = response.json()["state"]
        assert parse_time(cached["timestamp"]) > parse_time(ahead["state"]["timestamp"])

    def test_a_retry_is_due_after_its_delay_by_the_servers_clock(self, client: TestClient) -> None:
        run = create_run(client, empirical_policy={"retries": 1, "retry_delay": 60})
        ahead = recorded_from_an_event(
            client, run["id"], "RUNNING", occurred=datetime.now(UTC) + timedelta(hours=1)
        )
        before = datetime.now(UTC)

        response = set_state(client, run["id"], "FAILED")

        assert decided(response) == (201, "REJECT", "SCHEDULED", "AwaitingRetry")
        state = response.json()["state"]
        due = parse_time(state["state_details"]["scheduled_time"])
        assert before + timedelta(seconds=59) < due < datetime.now(UTC) + timedelta(seconds=61)
        assert parse_time(state["timestamp"]) > parse_time(ahead["state"]["timestamp"])

    def test_a_run_at_the_latest_instant_takes_its_next_states_there(
        self, client: TestClient
    ) -> None:
        run = create_run(client)
        recorded_from_an_event(client, run["id"], "RUNNING", occurred=LATEST)

        completed = set_state(client, run["id"], "COMPLETED")
        forced = set_state(client, run["id"], "CRASHED", force=True)

        assert decided(completed) == (201, "ACCEPT", "COMPLETED", "Completed")
        assert decided(forced) == (201, "ACCEPT", "CRASHED", "Crashed")
        read = read_run(client, run["id"])
        assert (read["state_id"], read["state_type"]) == (forced.json()["state"]["id"], "CRASHED")
        assert read["state"]["timestamp"] == "9999-12-31T23:59:59.999999Z"
        assert read["total_run_time"] == 0


class TestHowAProposalIsWritten:
    """On PostgreSQL a proposal is written by one statement unless its rules act after the
    write; on SQLite every proposal is a write of the group commit.
    """

    @pytest.mark.parametrize(
        ("proposed", "writes_on_postgresql"),
        [
            (("RUNNING", {}), [True]),
            (("COMPLETED", {}), [True]),
            # The state is cached once written: decided again in a transaction.
            (("COMPLETED", {"cache_key": "written-in-a-transaction"}), [True, False]),
            # The run is queued for a task worker once written.
            (("SCHEDULED", {"deferred": True}), [True, False]),
        ],
    )
    def test_writes_asked_of_the_database(
        self,
        client: TestClient,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        proposed: tuple[str, dict[str, Any]],
        writes_on_postgresql: list[bool],
    ) -> None:
        state_type, state_details = proposed
        run = run_in(client, "RUNNING")
        asked = record_writes(database, monkeypatch)

        response = set_state(client, run["id"], state_type, state_details=state_details)

        assert decided(response)[:3] == (201, "ACCEPT", state_type)
        assert asked == (writes_on_postgresql if not database.is_sqlite else [False])

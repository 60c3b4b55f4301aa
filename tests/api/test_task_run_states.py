"""The Task Run States operations through HTTP, on every database backend."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from tests.support.api import (
    assert_validation_error,
    create_run,
    parse_time,
    set_state,
    states_of,
)

STATES = "/api/task_run_states/"


class TestReadTaskRunStates:
    def test_lists_a_runs_states_oldest_first(self, client: TestClient) -> None:
        run = create_run(client, empirical_policy={"retries": 1})
        written = [
            set_state(client, run["id"], state_type).json()["state"]
            for state_type in ("RUNNING", "FAILED", "RUNNING", "COMPLETED")
        ]

        states = states_of(client, run["id"])

        assert states == [run["state"], *written]
        assert [(s["type"], s["name"]) for s in states] == [
            ("PENDING", "Pending"),
            ("RUNNING", "Running"),
            ("SCHEDULED", "AwaitingRetry"),
            ("RUNNING", "Retrying"),
            ("COMPLETED", "Completed"),
        ]
        timestamps = [parse_time(s["timestamp"]) for s in states]
        assert timestamps == sorted(timestamps)

    def test_states_that_were_not_written_are_not_listed(self, client: TestClient) -> None:
        run = create_run(client, state={"type": "COMPLETED", "data": {"kept": True}})

        set_state(client, run["id"], "RUNNING")
        set_state(client, run["id"], "CRASHED")

        assert states_of(client, run["id"]) == [run["state"]]

    def test_only_the_runs_own_states(self, client: TestClient) -> None:
        first, second = create_run(client, task_key="a"), create_run(client, task_key="b")
        set_state(client, second["id"], "RUNNING")

        assert states_of(client, first["id"]) == [first["state"]]
        assert len(states_of(client, second["id"])) == 2

    def test_an_unknown_run_has_no_states(self, client: TestClient) -> None:
        assert states_of(client, str(uuid.uuid4())) == []

    @pytest.mark.parametrize(
        ("params", "error_type"), [({}, "missing"), ({"task_run_id": "nope"}, "format")]
    )
    def test_the_run_id_is_required_and_a_uuid(
        self, client: TestClient, params: dict[str, str], error_type: str
    ) -> None:
        response = client.get(STATES, params=params)

        assert_validation_error(response, ["query", "task_run_id"], error_type)


class TestReadTaskRunState:
    def test_reads_a_state(self, client: TestClient) -> None:
        run = create_run(client)
        written = set_state(client, run["id"], "RUNNING", message="go", data={"x": 1}).json()

        for state in (run["state"], written["state"]):
            response = client.get(f"{STATES}{state['id']}")
            assert response.status_code == 200
            assert response.json() == state

    def test_an_unknown_state_is_404(self, client: TestClient) -> None:
        response = client.get(f"{STATES}{uuid.uuid4()}")

        assert response.status_code == 404
        assert response.json() == {"detail": "Task run state not found"}

    def test_an_id_that_is_not_a_uuid_is_422(self, client: TestClient) -> None:
        assert_validation_error(client.get(f"{STATES}nope"), ["path", "id"], "format")

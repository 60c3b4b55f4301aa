"""POST /task_runs/count through HTTP, on every database backend."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from tests.support.api import assert_validation_error
from tests.support.queries import COUNT, count_runs, filter_ids, new_run, task_runs


class TestCountTaskRuns:
    def test_counts_every_run_without_a_body(self, client: TestClient) -> None:
        for _ in range(3):
            new_run(client)

        response = client.post(COUNT)

        assert response.status_code == 200
        assert response.json() == 3
        assert count_runs(client, {}) == 3
        assert count_runs(client, {"task_runs": None, "unknown": "ignored"}) == 3

    def test_counts_what_filter_would_return_with_no_limit(self, client: TestClient) -> None:
        for key in range(205):
            body = {"task_key": "many", "dynamic_key": str(key), "tags": ["x"] if key % 2 else []}
            assert client.post("/api/task_runs/", json=body).status_code == 201

        assert count_runs(client) == 205
        tagged = task_runs(tags={"all_": ["x"]})
        assert count_runs(client, tagged) == 102
        assert count_runs(client, tagged) == len(filter_ids(client, tagged | {"limit": 200}))

    def test_counts_by_each_kind_of_criterion(self, client: TestClient) -> None:
        flow_run = str(uuid.uuid4())
        new_run(client, flow_run_id=flow_run, name="alpha", tags=["a"])
        new_run(client, state_type="COMPLETED", name="beta")
        new_run(client, scheduled_minutes=0, name="gamma")

        assert count_runs(client, task_runs(state={"type": {"any_": ["COMPLETED"]}})) == 1
        assert count_runs(client, task_runs(name={"like_": "A"})) == 3
        assert count_runs(client, task_runs(tags={"is_null_": True})) == 2
        assert count_runs(client, task_runs(flow_run_id={"any_": [flow_run]})) == 1
        assert count_runs(client, {"flow_runs": {}}) == 1
        assert count_runs(client, task_runs(operator="or_", id={"any_": []}, tags={})) == 3
        assert count_runs(client, task_runs(id={"any_": []})) == 0

    def test_unknown_keys_inside_a_filter_are_422(self, client: TestClient) -> None:
        response = client.post(COUNT, json={"task_runs": {"name": {"nope": []}}})

        assert_validation_error(response, ["body", "task_runs", "name", "nope"], "extra_forbidden")

    def test_limit_does_not_apply(self, client: TestClient) -> None:
        new_run(client)

        assert count_runs(client, {"limit": 0}) == 1

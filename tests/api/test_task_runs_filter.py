"""POST /task_runs/filter through HTTP, on every database backend."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.support.api import assert_validation_error, set_state
from tests.support.queries import (
    FILTER,
    at,
    filter_ids,
    filter_runs,
    ids,
    new_run,
    task_runs,
)


class TestReadTaskRuns:
    def test_no_body_returns_every_run_newest_id_first(self, client: TestClient) -> None:
        runs = [new_run(client) for _ in range(3)]

        response = client.post(FILTER)

        assert response.status_code == 200
        assert ids(response.json()) == sorted(ids(runs), reverse=True)
        assert response.json()[0] == filter_runs(client, {})[0] | {
            key: response.json()[0][key]
            for key in ("estimated_run_time", "estimated_start_time_delta")
        }

    def test_null_keys_and_unknown_top_level_keys_mean_the_defaults(
        self, client: TestClient
    ) -> None:
        runs = [new_run(client) for _ in range(2)]
        body = {
            "sort": None,
            "limit": None,
            "offset": None,
            "flows": None,
            "flow_runs": None,
            "task_runs": None,
            "deployments": None,
            "not_a_key": 1,
        }

        assert filter_ids(client, body) == sorted(ids(runs), reverse=True)
        assert filter_ids(client, None) == sorted(ids(runs), reverse=True)

"""Helpers for tests that drive the service through HTTP (a Starlette TestClient)."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from starlette.testclient import TestClient

CREATE = "/api/task_runs/"
ESTIMATES = {"estimated_run_time", "estimated_start_time_delta"}


def create(client: TestClient, **fields: Any) -> Any:
    """POST a create with task_key and dynamic_key defaulted; return the response."""
    body = {"task_key": "my-task", "dynamic_key": "0", **fields}
    return client.post(CREATE, json=body)


def create_run(client: TestClient, **fields: Any) -> dict[str, Any]:
    """Create a run (it must be new) and return it."""
    response = create(client, **fields)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def read_run(client: TestClient, run_id: str) -> dict[str, Any]:
    """GET a run that must exist."""
    response = client.get(f"{CREATE}{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def set_state(
    client: TestClient, run_id: str, state_type: str, *, force: bool | None = None, **state: Any
) -> Any:
    """POST a set_state proposing a state of `state_type` (plus `state`'s fields)."""
    body: dict[str, Any] = {"state": {"type": state_type, **state}}
    if force is not None:
        body["force"] = force
    return client.post(f"{CREATE}{run_id}/set_state", json=body)


def states_of(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    """The run's history, as GET /task_run_states/ lists it."""
    response = client.get("/api/task_run_states/", params={"task_run_id": run_id})
    assert response.status_code == 200, response.text
    states: list[dict[str, Any]] = response.json()
    return states


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def without_estimates(task_run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in task_run.items() if key not in ESTIMATES}


def assert_validation_error(response: Any, loc: list[Any], error_type: str) -> dict[str, Any]:
    """A 422 whose detail names `loc` with `error_type`; returns the body."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["exception_message"] == "Invalid request received."
    assert body["exception_detail"] == body["detail"]
    assert {"loc": loc, "type": error_type} in [
        {"loc": item["loc"], "type": item["type"]} for item in body["detail"]
    ], body["detail"]
    return body


def wide_text(count: int, seed: int = 0) -> str:
    """`count` characters of four bytes each in UTF-8, in an order that does not compress: the
    most room text of that length can take in a PostgreSQL index entry.
    """
    chosen = random.Random(seed)
    return "".join(chr(chosen.randrange(0x1F300, 0x1FB00)) for _ in range(count))

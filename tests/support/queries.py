"""Helpers for the query operations' tests: runs with chosen fields, and the four queries."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.testclient import TestClient

from tests.support.api import create_run

FILTER = "/api/task_runs/filter"
COUNT = "/api/task_runs/count"
PAGINATE = "/api/task_runs/paginate"
HISTORY = "/api/task_runs/history"
# A fixed instant the tests' scheduled times are counted from.
BASE = datetime(2026, 1, 1, tzinfo=UTC)
_keys = itertools.count()


def at(minutes: float) -> str:
    """BASE plus `minutes`, as the API writes datetimes."""
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def new_run(
    client: TestClient,
    *,
    scheduled_minutes: float | None = None,
    state_type: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Create a run with a key of its own; `scheduled_minutes` makes it SCHEDULED at at(...)."""
    body: dict[str, Any] = {"dynamic_key": f"run-{next(_keys)}", **fields}
    if scheduled_minutes is not None:
        body["state"] = {
            "type": "SCHEDULED",
            "state_details": {"scheduled_time": at(scheduled_minutes)},
        }
    elif state_type is not None:
        body["state"] = {"type": state_type}
    return create_run(client, **body)


def filter_runs(client: TestClient, body: Any = None) -> list[dict[str, Any]]:
    """POST /task_runs/filter, which must succeed; the runs."""
    response = client.post(FILTER, json=body)
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()
    return runs


def filter_ids(client: TestClient, body: Any = None) -> list[str]:
    """The ids /task_runs/filter returns, in order."""
    return [run["id"] for run in filter_runs(client, body)]


def count_runs(client: TestClient, body: Any = None) -> int:
    """POST /task_runs/count, which must succeed; the count."""
    response = client.post(COUNT, json=body)
    assert response.status_code == 200, response.text
    count: int = response.json()
    return count


def ids(runs: list[dict[str, Any]]) -> list[str]:
    return [run["id"] for run in runs]


def task_runs(**criteria: Any) -> dict[str, Any]:
    """A body whose TaskRunFilter has these criteria."""
    return {"task_runs": criteria}

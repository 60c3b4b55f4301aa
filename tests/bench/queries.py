"""The query cells: what each one asks of a large table of task runs, and its target.

Each cell is one request, sent again and again at the same concurrency: the bench measures
how fast the service answers it, and prints the plan of the SQL it runs for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tests.bench.seed import Dataset

QUERY_CONCURRENCY = 16
LIMIT = 200
# The targets at QUERY_CONCURRENCY: p99 of filter and paginate, of count and history.
LIST_P99_MS = 50.0
AGGREGATE_P99_MS = 100.0
HISTORY_DAYS = 7
HISTORY_INTERVAL_SECONDS = 3600
PAGE = 100
# The state type and tags the cells ask for: a run in twelve is FAILED; the two tags are the
# most common of the vocabulary (weights 1/rank), so all_ of both matches a few per cent.
STATE_TYPE = "FAILED"
NAME_FRAGMENT = "task-417-"


# The cells, in the order they run.
QUERY_CELLS = (
    "q_flow_run",
    "q_state_sorted",
    "q_two_tags",
    "q_name_like",
    "q_paginate",
    "q_count_state",
    "q_history",
)


@dataclass(frozen=True)
class QueryCell:
    """One request of the query bench."""

    name: str
    path: str
    body: dict[str, Any]
    target_p99_ms: float
    description: str

    @property
    def body_text(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


def _filter(criteria: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"task_runs": criteria, "limit": LIMIT, **fields}


def query_cells(dataset: Dataset) -> list[QueryCell]:
    """The query cells (QUERY_CELLS), with criteria taken from what was loaded."""
    first_tags = list(dataset.tags[:2])
    history_start = dataset.window_end - timedelta(days=HISTORY_DAYS)
    cells = [
        QueryCell(
            "q_flow_run",
            "/api/task_runs/filter",
            _filter({"flow_run_id": {"any_": [dataset.flow_run_ids[0]]}}),
            LIST_P99_MS,
            "filter by flow_run_id (the flow run with the most task runs)",
        ),
        QueryCell(
            "q_state_sorted",
            "/api/task_runs/filter",
            _filter({"state": {"type": {"any_": [STATE_TYPE]}}}, sort="EXPECTED_START_TIME_DESC"),
            LIST_P99_MS,
            f"filter by state type {STATE_TYPE}, sorted by EXPECTED_START_TIME_DESC",
        ),
        QueryCell(
            "q_two_tags",
            "/api/task_runs/filter",
            _filter({"tags": {"all_": first_tags}}),
            LIST_P99_MS,
            f"filter by tags all_ {first_tags}",
        ),
        QueryCell(
            "q_name_like",
            "/api/task_runs/filter",
            _filter({"name": {"like_": NAME_FRAGMENT}}),
            LIST_P99_MS,
            f"filter by name like_ {NAME_FRAGMENT!r}",
        ),
        QueryCell(
            "q_paginate",
            "/api/task_runs/paginate",
            {"limit": LIMIT, "page": PAGE},
            LIST_P99_MS,
            f"paginate every run, page {PAGE}",
        ),
        QueryCell(
            "q_count_state",
            "/api/task_runs/count",
            {"task_runs": {"state": {"type": {"any_": [STATE_TYPE]}}}},
            AGGREGATE_P99_MS,
            f"count the runs in state type {STATE_TYPE}",
        ),
        QueryCell(
            "q_history",
            "/api/task_runs/history",
            {
                "history_start": history_start.isoformat(),
                "history_end": dataset.window_end.isoformat(),
                "history_interval_seconds": HISTORY_INTERVAL_SECONDS,
            },
            AGGREGATE_P99_MS,
            f"history of the last {HISTORY_DAYS} days in 1-hour intervals",
        ),
    ]
    assert tuple(cell.name for cell in cells) == QUERY_CELLS
    return cells

"""Task runs as JSON, built straight from their rows: reads and lists of runs.

A page of 200 runs built as models (each field validated) and then serialised cost about
three times what reading the page from the database did. Here each run becomes a dict of
values the JSON encoder writes exactly as it writes the model's fields: ids already as
text, instants as aware datetimes, numbers and strings as stored. The JSON columns go
through the models they belong to (TaskRunPolicy, StateDetails, ...) so that defaults,
field order and normalised values come out as a model would give them; their stored texts
repeat a great deal (policies, tags, inputs), so each distinct text is validated once.

The answer is byte for byte what serialising the models gives
(tests/api/test_task_runs_lists_as_reads.py compares it with reading each run).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from app.db.task_run_queries import ListedTaskRun
from app.services.task_runs import lateness_at, run_time_at
from generated import models

# How many distinct stored texts of each JSON column keep their validated value.
_CACHED_TEXTS = 4096


def _field_validator(model: type[Any], name: str) -> Callable[[Any], Any]:
    """A function from a decoded JSON value to what the model's field `name` holds for it,
    in the form the JSON encoder writes as the model would.
    """
    adapter: TypeAdapter[Any] = TypeAdapter(model.model_fields[name].annotation)

    def validated(value: Any) -> Any:
        return adapter.dump_python(adapter.validate_python(value), mode="json")

    return validated


def _cached_field_text(model: type[Any], name: str) -> Callable[[str], Any]:
    """`_field_validator` of a stored JSON text, kept for the last distinct texts."""
    validated = _field_validator(model, name)

    @functools.lru_cache(_CACHED_TEXTS)
    def validated_text(text: str) -> Any:
        return validated(pydantic_core.from_json(text))

    return validated_text


_policy = _cached_field_text(models.TaskRun, "empirical_policy")
_tags = _cached_field_text(models.TaskRun, "tags")
_labels = _cached_field_text(models.TaskRun, "labels")
_inputs = _cached_field_text(models.TaskRun, "task_inputs")
# A state's details name its run: no two runs share them, so they are not cached.
_validated_details = _field_validator(models.State, "state_details")
_DETAIL_FIELDS = tuple(models.StateDetails.model_fields)


def _details(text: str) -> Any:
    """The details as StateDetails gives them. The service stores every state's details as
    the model dumped to JSON (app/services/states.py, `stored_details`): all of its fields,
    in its order, each value already as the model writes it. Such a text is taken as it is
    (validating it again took 9 µs, most of what a run of the page cost); any other text is
    validated.
    """
    parsed = pydantic_core.from_json(text)
    if isinstance(parsed, dict) and tuple(parsed) == _DETAIL_FIELDS:
        return parsed
    return _validated_details(parsed)


def task_runs_json(runs: Sequence[ListedTaskRun], *, now: datetime) -> bytes:
    """The JSON array of these runs as TaskRun objects, their estimates computed for `now`."""
    return _encode([_task_run(run, now) for run in runs])


def task_run_json(run: ListedTaskRun, *, now: datetime) -> bytes:
    """The run as a TaskRun object, its estimates computed for `now`."""
    return _encode(_task_run(run, now))


def pagination_json(
    results: Sequence[ListedTaskRun],
    *,
    count: int,
    limit: int,
    pages: int,
    page: int,
    now: datetime,
) -> bytes:
    """A TaskRunPaginationResponse holding these runs, as JSON."""
    return _encode(
        {
            "results": [_task_run(run, now) for run in results],
            "count": count,
            "limit": limit,
            "pages": pages,
            "page": page,
        }
    )


def _encode(value: Any) -> bytes:
    # As a model's JSON: infinities and NaN are written as null.
    return pydantic_core.to_json(value, inf_nan_mode="null")


def _task_run(run: ListedTaskRun, now: datetime) -> dict[str, Any]:
    """A run's fields in TaskRun's order, as its JSON gives them."""
    return {
        "id": run.id,
        "created": run.created,
        "updated": run.updated,
        "name": run.name,
        "flow_run_id": run.flow_run_id,
        "task_key": run.task_key,
        "dynamic_key": run.dynamic_key,
        "cache_key": run.cache_key,
        "cache_expiration": run.cache_expiration,
        "task_version": run.task_version,
        "empirical_policy": _policy(run.empirical_policy),
        "tags": _tags(run.tags),
        "labels": _labels(run.labels),
        "state_id": run.state_id,
        "task_inputs": _inputs(run.task_inputs),
        "state_type": run.state_type,
        "state_name": run.state_name,
        "run_count": run.run_count,
        "flow_run_run_count": run.flow_run_run_count,
        "expected_start_time": run.expected_start_time,
        "next_scheduled_start_time": run.next_scheduled_start_time,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "total_run_time": float(run.total_run_time),
        "estimated_run_time": float(
            run_time_at(now, run.state_type, run.state_timestamp, run.total_run_time)
        ),
        "estimated_start_time_delta": lateness_at(
            now, run.state_type, run.expected_start_time, run.start_time
        ),
        "state": None if run.state_row_type is None else _state(run),
    }


def _state(run: ListedTaskRun) -> dict[str, Any]:
    """The run's current state in State's order, as its JSON gives it."""
    data = run.state_row_data
    return {
        "id": run.state_id,
        "type": run.state_row_type,
        "name": run.state_row_name,
        "timestamp": run.state_row_timestamp,
        "message": run.state_row_message,
        # `data` is any JSON value: the stored one, as it is.
        "data": None if data is None else pydantic_core.from_json(data),
        "state_details": None if run.state_row_details is None else _details(run.state_row_details),
    }

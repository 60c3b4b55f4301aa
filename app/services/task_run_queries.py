"""Finding task runs as Prefect's filter, count, paginate and history operations do.

A body's filters become one condition (app/db/task_run_queries.py): the task-run filter's
criteria combined by its operator, and the flow-level filters, which can only ask whether a
run has a flow run and which one, since this service stores no flow runs.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from sqlalchemy import Connection

from app.db import task_run_queries as queries
from app.db.task_run_queries import Condition, TimeField
from app.services import task_run_json
from app.services.clock import LATEST, to_utc, utcnow
from app.services.errors import NotFound
from app.services.task_runs import NOT_FOUND_MESSAGE
from generated import models

# Prefect's PREFECT_SERVER_API_DEFAULT_LIMIT: the default and the largest page.
DEFAULT_LIMIT = 200
MAX_HISTORY_INTERVALS = 500


class FilteredBody(Protocol):
    """The filters every query body carries."""

    flows: models.FlowFilter | None
    flow_runs: models.FlowRunFilter | None
    task_runs: models.TaskRunFilter | None


def read_task_run(*, connection: Connection, task_run_id: UUID) -> bytes:
    """The task run with this id, with its current state, as JSON.

    :raises NotFound: no task run has this id.
    """
    run = queries.find_listed_task_run(connection, task_run_id)
    if run is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return task_run_json.task_run_json(run, now=utcnow())


def read_task_runs(*, connection: Connection, body: models.ReadTaskRunsBody | None) -> bytes:
    """The matching runs in the body's order, `offset` skipped, at most `limit`: the JSON
    array of them.
    """
    body = body or models.ReadTaskRunsBody()
    runs = queries.list_task_runs(
        connection,
        matching(body),
        sort=_sort(body.sort),
        limit=_limit(body.limit),
        offset=body.offset or 0,
        now=utcnow(),
    )
    return task_run_json.task_runs_json(runs, now=_after_reading())


def count_task_runs(*, connection: Connection, body: models.CountTaskRunsBody | None) -> int:
    """How many runs match."""
    return queries.count_task_runs(connection, matching(body or models.CountTaskRunsBody()))


def paginate_task_runs(
    *, connection: Connection, body: models.PaginateTaskRunsBody | None
) -> bytes:
    """One page of the matching runs, with how many match and how many pages they fill: the
    JSON of a TaskRunPaginationResponse.
    """
    body = body or models.PaginateTaskRunsBody()
    limit, page = _limit(body.limit), body.page or 1
    condition = matching(body)
    count = queries.count_task_runs(connection, condition)
    runs = queries.list_task_runs(
        connection,
        condition,
        sort=_sort(body.sort),
        limit=limit,
        offset=(page - 1) * limit,
        now=utcnow(),
    )
    return task_run_json.pagination_json(
        runs,
        count=count,
        limit=limit,
        pages=math.ceil(count / limit) if limit else 0,
        page=page,
        now=_after_reading(),
    )


def _after_reading() -> datetime:
    """The moment a list's estimates are computed for: after its runs were read, as a single
    read computes them, so that a run that entered RUNNING while the list was being read
    never shows less than its total run time.
    """
    return utcnow()


def task_run_history(
    *, connection: Connection, body: models.TaskRunHistoryBody
) -> list[models.HistoryResponse]:
    """The matching runs counted by state in each interval of their expected start."""
    start, end = to_utc(body.history_start), to_utc(body.history_end)
    interval = timedelta(seconds=body.history_interval_seconds)
    starts = _interval_starts(start, end, interval)
    if not starts:
        return []
    rows = queries.task_run_history(
        connection,
        matching(body),
        start=start,
        end=_end_of_last(starts[-1], interval),
        interval=interval,
        now=utcnow(),
    )
    states: list[list[models.HistoryResponseState]] = [[] for _ in starts]
    for row in sorted(rows, key=lambda row: (row.state_type, row.state_name)):
        states[row.interval].append(
            models.HistoryResponseState(
                state_type=models.StateType(row.state_type),
                state_name=row.state_name,
                count_runs=row.count_runs,
                sum_estimated_run_time=max(row.sum_estimated_run_time, 0.0),
                sum_estimated_lateness=max(row.sum_estimated_lateness, 0.0),
            )
        )
    return [
        models.HistoryResponse(
            interval_start=interval_start,
            interval_end=_later(interval_start, interval),
            states=interval_states,
        )
        for interval_start, interval_states in zip(starts, states, strict=True)
    ]


def _interval_starts(start: datetime, end: datetime, interval: timedelta) -> list[datetime]:
    """The starts of the intervals from `start` until one holds `end`, at most 500."""
    starts: list[datetime] = []
    current = start
    while current < end and len(starts) < MAX_HISTORY_INTERVALS:
        starts.append(current)
        if current == LATEST:
            break
        current = _later(current, interval)
    return starts


def _end_of_last(start: datetime, interval: timedelta) -> datetime | None:
    """Where the last interval, from `start`, ends; None when that is past the latest instant
    there is: the interval then holds every instant from `start` on, the latest included.
    """
    try:
        return start + interval
    except OverflowError:
        return None


def _later(instant: datetime, interval: timedelta) -> datetime:
    """`instant + interval`, or the latest instant there is."""
    try:
        return instant + interval
    except OverflowError:
        return LATEST


def _sort(sort: models.TaskRunSort | None) -> queries.Sort:
    return queries.Sort((sort or models.TaskRunSort.ID_DESC).value)


def _limit(limit: int | None) -> int:
    # The schema bounds it to 0..200.
    return DEFAULT_LIMIT if limit is None else limit


# ---------------------------------------------------------------------------------------
# Filters -> conditions


def matching(body: FilteredBody) -> Condition:
    """The condition a body's filters put on runs: all of them hold."""
    conditions = []
    if body.task_runs is not None:
        conditions.append(task_run_condition(body.task_runs))
    if body.flows is not None or body.flow_runs is not None:
        # Every flow run has a flow: `{}` of either keeps the runs that have a flow run.
        conditions.append(queries.with_flow_run())
    flow_run_ids = _flow_run_ids(body.flow_runs)
    if flow_run_ids is not None:
        conditions.append(queries.flow_run_id_in(flow_run_ids))
    return queries.all_of(conditions)


def _flow_run_ids(flow_runs: models.FlowRunFilter | None) -> list[UUID] | None:
    if flow_runs is None or flow_runs.id is None or flow_runs.id.any_ is None:
        return None
    return list(flow_runs.id.any_)


def _combined(operator: models.Operator, conditions: list[Condition]) -> Condition:
    if operator == models.Operator.or_:
        return queries.any_of(conditions)
    return queries.all_of(conditions)


def task_run_condition(task_runs: models.TaskRunFilter) -> Condition:
    """The criteria of a TaskRunFilter, combined by its operator.

    A criterion given as an object adds a condition even when the object sets nothing
    (then every run matches it), as in Prefect: under `or_` it matches every run.
    """
    conditions = []
    if task_runs.id is not None:
        conditions.append(_id_condition(task_runs.id))
    if task_runs.name is not None:
        conditions.append(_name_condition(task_runs.name))
    if task_runs.tags is not None:
        conditions.append(_tags_condition(task_runs.tags))
    if task_runs.state is not None:
        conditions.append(_state_condition(task_runs.state))
    if (start := task_runs.start_time) is not None:
        conditions.append(_time_condition(TimeField.START_TIME, start, start.is_null_))
    if (end := task_runs.end_time) is not None:
        conditions.append(_time_condition(TimeField.END_TIME, end, end.is_null_))
    if (expected := task_runs.expected_start_time) is not None:
        conditions.append(_time_condition(TimeField.EXPECTED_START_TIME, expected, None))
    if task_runs.subflow_runs is not None:
        conditions.append(_subflow_condition(task_runs.subflow_runs))
    if task_runs.flow_run_id is not None:
        conditions.append(_flow_run_id_condition(task_runs.flow_run_id))
    return _combined(task_runs.operator, conditions)


def _id_condition(criterion: models.TaskRunFilterId) -> Condition:
    if criterion.any_ is None:
        return queries.everything()
    return queries.id_in(criterion.any_)


def _name_condition(criterion: models.TaskRunFilterName) -> Condition:
    conditions = []
    if criterion.any_ is not None:
        conditions.append(queries.name_in([name.root for name in criterion.any_]))
    if criterion.like_ is not None:
        conditions.append(queries.name_contains(criterion.like_))
    return queries.all_of(conditions)


def _tags_condition(criterion: models.TaskRunFilterTags) -> Condition:
    conditions = []
    if criterion.all_ is not None:
        conditions.append(queries.has_all_tags([tag.root for tag in criterion.all_]))
    if criterion.is_null_ is True:
        conditions.append(queries.has_no_tags())
    elif criterion.is_null_ is False:
        conditions.append(~queries.has_no_tags())
    return _combined(criterion.operator, conditions)


def _state_condition(criterion: models.TaskRunFilterState) -> Condition:
    conditions = []
    if criterion.type is not None and criterion.type.any_ is not None:
        conditions.append(queries.state_type_in([kind.value for kind in criterion.type.any_]))
    if criterion.name is not None and criterion.name.any_ is not None:
        conditions.append(queries.state_name_in([name.root for name in criterion.name.any_]))
    return _combined(criterion.operator, conditions)


class _TimeBounds(Protocol):
    before_: datetime | None
    after_: datetime | None


def _time_condition(field: TimeField, bounds: _TimeBounds, is_null: bool | None) -> Condition:
    """Both bounds inclusive; `is_null` true or false asks for no time or for one."""
    conditions = []
    if bounds.before_ is not None:
        conditions.append(queries.at_or_before(field, to_utc(bounds.before_)))
    if bounds.after_ is not None:
        conditions.append(queries.at_or_after(field, to_utc(bounds.after_)))
    if is_null is True:
        conditions.append(queries.time_is_null(field))
    elif is_null is False:
        conditions.append(queries.time_is_set(field))
    return queries.all_of(conditions)


def _subflow_condition(criterion: models.TaskRunFilterSubFlowRuns) -> Condition:
    # No run here is the parent task of a subflow run: this service stores no flow runs.
    if criterion.exists_ is True:
        return queries.nothing()
    return queries.everything()


def _flow_run_id_condition(criterion: models.TaskRunFilterFlowRunId) -> Condition:
    """Prefect's precedence: `is_null_` true wins over `any_`; false (the default) with no
    `any_` keeps the runs that have a flow run; `null` leaves `any_` alone.
    """
    if criterion.is_null_ is True:
        return queries.without_flow_run()
    conditions = []
    if criterion.any_ is not None:
        conditions.append(queries.flow_run_id_in(criterion.any_))
    elif criterion.is_null_ is False:
        conditions.append(queries.with_flow_run())
    return _combined(criterion.operator, conditions)

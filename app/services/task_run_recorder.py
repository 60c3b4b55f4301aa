"""Task runs and their states as task workers and flows report them: from events.

A `prefect.task-run.*` event that a client sent about its own orchestration (its resource says
`prefect.orchestration: client`) carries the run's new state and the run's fields. The run is
inserted or brought up to date, and the state joins its history. Nothing is orchestrated: the
client already decided.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from annotated_types import Ge, Le, MaxLen
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator
from sqlalchemy import Connection

from app.db import task_run_states as state_rows
from app.db import task_runs as run_rows
from app.db.records import EventRecord, TaskRunRecord, TaskRunStateRecord
from app.db.tables import INTEGER_MAX
from app.services.clock import to_utc, utcnow
from app.services.names import random_name
from app.services.states import StateType, stored_details
from app.services.task_runs import effective_policy
from generated import models

logger = logging.getLogger(__name__)

TASK_RUN_EVENT_PREFIX = "prefect.task-run."
TASK_RUN_RESOURCE_PREFIX = "prefect.task-run."
FLOW_RUN_RESOURCE_PREFIX = "prefect.flow-run."


def _without_nul(text: str) -> str:
    """The text with each NUL (U+0000), which PostgreSQL cannot store, replaced by U+FFFD.

    A client reports a state it has already entered (a failure's message may hold any
    character): refusing the event would leave the run in its previous state for good.
    """
    return text.replace("\x00", "\ufffd")


def _document_max_length(model: type[BaseModel], field: str) -> int:
    """The `maxLength` openapi.yaml gives a field of one of its models."""
    for constraint in model.model_fields[field].metadata:
        if isinstance(constraint, MaxLen):
            return int(constraint.max_length)
    raise LookupError(f"{model.__name__}.{field} has no maxLength")


# Text stored in a column of its own; indexed text is bounded as the API bounds it, so that
# it fits in an index entry on PostgreSQL.
ColumnText = Annotated[str, AfterValidator(_without_nul)]
RunName = Annotated[ColumnText, MaxLen(_document_max_length(models.TaskRunCreate, "name"))]
TaskKey = Annotated[ColumnText, MaxLen(_document_max_length(models.TaskRunCreate, "task_key"))]
DynamicKey = Annotated[
    ColumnText, MaxLen(_document_max_length(models.TaskRunCreate, "dynamic_key"))
]
CacheKey = Annotated[ColumnText, MaxLen(_document_max_length(models.TaskRunCreate, "cache_key"))]
# A tag may hold NUL: the run's list keeps it, and only the index of tags leaves it out.
Tag = Annotated[str, MaxLen(_document_max_length(models.Tag, "root"))]
StateName = Annotated[ColumnText, MaxLen(_document_max_length(models.StateCreate, "name"))]
# A count of runs: never negative (a retry's delay is the entry of its count in a list),
# and held by the run's Integer columns on both databases.
StoredCount = Annotated[int, Ge(0), Le(INTEGER_MAX)]
# A run time in seconds, within about 31,700 years either way: sums of many of them (history)
# stay far from a float's overflow, which PostgreSQL refuses and SQLite turns into null.
MAX_RUN_SECONDS = 1e12
RunSeconds = Annotated[float, Ge(-MAX_RUN_SECONDS), Le(MAX_RUN_SECONDS)]


class ReportedState(BaseModel):
    """`payload.validated_state`: the state the client moved the run into."""

    model_config = ConfigDict(extra="ignore")

    type: models.StateType
    name: StateName | None = None
    message: ColumnText | None = None
    data: Any = None
    state_details: models.StateDetails = models.StateDetails()

    @field_validator("state_details", mode="before")
    @classmethod
    def _cache_key_without_nul(cls, details: Any) -> Any:
        # The one detail the API keeps free of NUL; the state is recorded all the same.
        if isinstance(details, dict) and isinstance(details.get("cache_key"), str):
            return {**details, "cache_key": _without_nul(details["cache_key"])}
        return details


class ReportedTaskRun(BaseModel):
    """`payload.task_run`: the run's fields as the client knows them; absent ones stay as
    they are on the server.
    """

    model_config = ConfigDict(extra="ignore")

    name: RunName | None = None
    task_key: TaskKey | None = None
    dynamic_key: DynamicKey | None = None
    task_version: ColumnText | None = None
    empirical_policy: models.TaskRunPolicy | None = None
    tags: list[Tag] | None = None
    labels: dict[str, bool | int | float | str] | None = None
    # Validated as the API's own, so that every stored run reads back.
    task_inputs: (
        dict[
            str,
            list[models.TaskRunResult | models.FlowRunResult | models.Parameter | models.Constant],
        ]
        | None
    ) = None
    run_count: StoredCount | None = None
    flow_run_run_count: StoredCount | None = None
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: RunSeconds | None = None
    cache_key: CacheKey | None = None
    cache_expiration: datetime | None = None


class TaskRunReport(BaseModel):
    """The part of a task-run event's payload the recorder reads."""

    model_config = ConfigDict(extra="ignore")

    validated_state: ReportedState
    task_run: ReportedTaskRun


class UnrecordableEvent(ValueError):
    """A task-run event whose resource or payload does not say which run, or in what state."""


def is_client_task_run_event(record: EventRecord) -> bool:
    """Whether the event reports a task run's state that the client orchestrated."""
    return record.event.startswith(TASK_RUN_EVENT_PREFIX) and (
        record.resource.get("prefect.orchestration") == "client"
    )


def record_task_run_event(connection: Connection, record: EventRecord) -> None:
    """Insert or update the run the event reports on, and add its state to the run's history.

    The run is found by (flow_run_id, task_key, dynamic_key) when it belongs to a flow run,
    else by id; an existing run's id wins. The run's fields only move forward: an event older
    than the run's current state adds its state to the history and changes nothing else. A
    newer one also brings the flow run (none when the event names none), task key and
    dynamic key it reports, unless another run has those keys.

    :raises UnrecordableEvent: the event does not name a run or does not carry a state.
    """
    task_run_id = _resource_uuid(record.resource["prefect.resource.id"], TASK_RUN_RESOURCE_PREFIX)
    flow_run_id = _flow_run_id(record.related)
    report = _report(record.payload)
    now = utcnow()
    run = _existing_run(connection, task_run_id, flow_run_id, report.task_run)
    if run is None:
        new_run = _new_run(task_run_id, flow_run_id, report, now=now)
        state = _state(record, report.validated_state, run=new_run, flow_run_id=flow_run_id)
        _enter_reported_state(new_run, state, report.task_run)
        if run_rows.insert_task_run_unless_conflicting(connection, new_run):
            state_rows.insert_state(connection, state)
            return
        # Another transaction inserted it meanwhile: bring that one up to date instead.
        run = _existing_run(connection, task_run_id, flow_run_id, report.task_run)
        if run is None:
            raise UnrecordableEvent(
                f"task run {task_run_id} cannot be stored: another run has its task key"
                " and dynamic key"
            )
    state = _state(record, report.validated_state, run=run, flow_run_id=flow_run_id)
    if not state_rows.insert_state_unless_present(connection, state):
        return  # this state is in the history already (a create answered with it)
    if run.state_timestamp is None or state.timestamp > run.state_timestamp:
        _enter_reported_state(run, state, report.task_run)
        run.updated = now
        run_rows.update_reported_fields(connection, run)
        _take_reported_keys(connection, run, report.task_run, flow_run_id=flow_run_id)


def _take_reported_keys(
    connection: Connection,
    run: TaskRunRecord,
    reported: ReportedTaskRun,
    *,
    flow_run_id: UUID | None,
) -> None:
    """Give the run the flow run, task key and dynamic key the event reports, as Prefect's
    recorder does, unless another run has those keys (then the run keeps its own, and the log
    says so).
    """
    task_key = reported.task_key or run.task_key
    dynamic_key = reported.dynamic_key or run.dynamic_key
    if (flow_run_id, task_key, dynamic_key) == (run.flow_run_id, run.task_key, run.dynamic_key):
        return
    if not run_rows.change_task_run_keys(
        connection,
        task_run_id=run.id,
        flow_run_id=flow_run_id,
        task_key=task_key,
        dynamic_key=dynamic_key,
    ):
        logger.warning(
            "task run %s keeps its keys: another run has flow run %s, task key %r and"
            " dynamic key %r",
            run.id,
            flow_run_id,
            task_key,
            dynamic_key,
        )


def _report(payload: dict[str, Any]) -> TaskRunReport:
    try:
        return TaskRunReport.model_validate(payload)
    except ValidationError as error:
        raise UnrecordableEvent(
            f"the payload is not a task-run report: {_validation_problems(error)}"
        ) from error


def _validation_problems(error: ValidationError) -> str:
    """Where and what, as a 422 names them: not pydantic's text, which repeats the values."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(payload)'}: {problem['msg']}"
        for problem in error.errors(include_url=False, include_input=False)
    )


def _resource_uuid(resource_id: str, prefix: str) -> UUID:
    if not resource_id.startswith(prefix):
        raise UnrecordableEvent(f"{resource_id!r} does not start with {prefix!r}")
    try:
        return UUID(resource_id.removeprefix(prefix))
    except ValueError as error:
        raise UnrecordableEvent(f"{resource_id!r} does not end with a UUID") from error


def _flow_run_id(related: list[dict[str, str]]) -> UUID | None:
    for resource in related:
        if resource.get("prefect.resource.role") == "flow-run":
            return _resource_uuid(resource["prefect.resource.id"], FLOW_RUN_RESOURCE_PREFIX)
    return None


def _existing_run(
    connection: Connection, task_run_id: UUID, flow_run_id: UUID | None, reported: ReportedTaskRun
) -> TaskRunRecord | None:
    """The run this event is about, if stored, locked for this transaction."""
    if (
        flow_run_id is not None
        and reported.task_key is not None
        and reported.dynamic_key is not None
    ):
        by_key = run_rows.find_task_run_by_key(
            connection,
            flow_run_id=flow_run_id,
            task_key=reported.task_key,
            dynamic_key=reported.dynamic_key,
        )
        if by_key is not None:
            task_run_id = by_key.run.id
    stored = run_rows.find_task_run_to_change(connection, task_run_id)
    return stored.run if stored is not None else None


def _new_run(
    task_run_id: UUID, flow_run_id: UUID | None, report: TaskRunReport, *, now: datetime
) -> TaskRunRecord:
    reported = report.task_run
    if reported.task_key is None or reported.dynamic_key is None:
        raise UnrecordableEvent("a new task run needs its task_key and dynamic_key")
    return TaskRunRecord(
        id=task_run_id,
        created=now,
        updated=now,
        name=reported.name or random_name(),
        flow_run_id=flow_run_id,
        task_key=reported.task_key,
        dynamic_key=reported.dynamic_key,
        cache_key=None,
        cache_expiration=None,
        task_version=None,
        empirical_policy=effective_policy(None),
        tags=[],
        labels={},
        task_inputs={},
        state_id=None,
        state_type=None,
        state_name=None,
        state_timestamp=None,
        run_count=0,
        flow_run_run_count=0,
        expected_start_time=None,
        next_scheduled_start_time=None,
        start_time=None,
        end_time=None,
        total_run_time=0.0,
    )


def _state(
    record: EventRecord, reported: ReportedState, *, run: TaskRunRecord, flow_run_id: UUID | None
) -> TaskRunStateRecord:
    """The event's state, as a state of `run`: the event's id and time are the state's, and
    its details name the event's flow run.
    """
    state_type = StateType(reported.type)
    return TaskRunStateRecord(
        id=record.id,
        created=utcnow(),
        task_run_id=run.id,
        type=state_type.value,
        name=reported.name if reported.name is not None else state_type.value.title(),
        timestamp=record.occurred,
        message=reported.message,
        data=reported.data,
        state_details=stored_details(
            reported.state_details,
            state_type=state_type,
            task_run_id=run.id,
            flow_run_id=flow_run_id,
            now=record.occurred,
        ),
    )


# The run's fields an event may set, as the client reports them.
_REPORTED_FIELDS = (
    "name",
    "task_version",
    "tags",
    "labels",
    "task_inputs",
    "run_count",
    "flow_run_run_count",
    "next_scheduled_start_time",
    "start_time",
    "end_time",
    "total_run_time",
    "cache_key",
)
_REPORTED_TIMES = frozenset({"next_scheduled_start_time", "start_time", "end_time"})


def _enter_reported_state(
    run: TaskRunRecord, state: TaskRunStateRecord, reported: ReportedTaskRun
) -> None:
    """Make `state` the run's current state, with the fields the client reported."""
    given = reported.model_fields_set
    for name in _REPORTED_FIELDS:
        if name in given:
            value = _reported_value(reported, name)
            if name in _REPORTED_TIMES and value is not None:
                value = to_utc(value)
            if value is not None or name in _NULLABLE_FIELDS:
                setattr(run, name, value)
    if "empirical_policy" in given:
        run.empirical_policy = effective_policy(reported.empirical_policy)
    if "expected_start_time" in given and reported.expected_start_time is not None:
        run.expected_start_time = to_utc(reported.expected_start_time)
    if "cache_expiration" in given:
        expiration = reported.cache_expiration
        run.cache_expiration = to_utc(expiration) if expiration is not None else None
    run.state_id = state.id
    run.state_type = state.type
    run.state_name = state.name
    run.state_timestamp = state.timestamp


def _reported_value(reported: ReportedTaskRun, name: str) -> Any:
    """A reported field as its column holds it: the run inputs as JSON, not as models, and
    a new random name for a name reported empty or null (as a create gives one).
    """
    if name == "task_inputs":
        return reported.model_dump(mode="json", include={"task_inputs"})["task_inputs"]
    if name == "name":
        return reported.name or random_name()
    return getattr(reported, name)


# Columns that may hold null; a null reported for any other keeps the stored value.
_NULLABLE_FIELDS = frozenset(
    {"task_version", "next_scheduled_start_time", "start_time", "end_time", "cache_key"}
)

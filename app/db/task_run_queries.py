"""Finding task runs: the conditions a filter is made of, the orders, and the three queries
(runs, count, history) built from them.

The same data gives the same answers on SQLite and PostgreSQL: every order ends with the id,
NULLs come last, names compare by code point (see the `name` column), a name search folds
ASCII letters only, and time arithmetic is done in whole microseconds.
"""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Interval,
    Select,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Text

from app.db.driver_statements import DriverStatement
from app.db.tables import task_run, task_run_state, task_run_tag
from app.db.task_runs import RUN_WITH_CURRENT_STATE
from app.db.types import UTCDateTime, json_text, uuid_text

Condition = ColumnElement[bool]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_LIKE_ESCAPE = "\\"
_TERMINAL_STATE_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_SQLITE_WITH_UNIXEPOCH = (3, 38, 0)


class _EpochMicroseconds(FunctionElement[int]):
    """Whole microseconds from 1970-01-01 UTC to a datetime column or parameter."""

    type = BigInteger()
    inherit_cache = True


@compiles(_EpochMicroseconds, "sqlite")
def _epoch_microseconds_sqlite(
    element: _EpochMicroseconds, compiler: SQLCompiler, **kw: Any
) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC): whole seconds, then the fraction.
    # The seconds are read from the first 19 characters alone: SQLite's date functions round
    # a fraction to the millisecond, and would read '12:00:03.9996' as second 4.
    value = compiler.process(next(iter(element.clauses)), **kw)
    return (
        f"({_sqlite_epoch_seconds(f'substr({value}, 1, 19)')} * 1000000"
        f" + CAST(substr({value}, 21, 6) AS INTEGER))"
    )


def _sqlite_epoch_seconds(text: str) -> str:
    """SQL for the whole seconds since 1970 of SQLite's text of an instant: unixepoch() where
    SQLite has it (3.38 and later), a third cheaper per row than strftime('%s').
    """
    if sqlite3.sqlite_version_info >= _SQLITE_WITH_UNIXEPOCH:
        return f"unixepoch({text})"
    return f"CAST(strftime('%s', {text}) AS INTEGER)"


@compiles(_EpochMicroseconds, "postgresql")
def _epoch_microseconds_postgresql(
    element: _EpochMicroseconds, compiler: SQLCompiler, **kw: Any
) -> str:
    # EXTRACT gives an exact numeric (PostgreSQL 14 and later).
    value = compiler.process(next(iter(element.clauses)), **kw)
    return f"CAST(EXTRACT(EPOCH FROM {value}) * 1000000 AS BIGINT)"


def epoch_microseconds(instant: datetime) -> int:
    """What _EpochMicroseconds gives for `instant`, computed here."""
    return (instant - _EPOCH) // _MICROSECOND


class _SecondsBetween(FunctionElement[float]):
    """Seconds from one datetime to another, as a float."""

    type = Float()
    inherit_cache = True


@compiles(_SecondsBetween, "sqlite")
def _seconds_between_sqlite(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = element.clauses
    microseconds = _EpochMicroseconds(later) - _EpochMicroseconds(earlier)
    return compiler.process(cast(microseconds, Float) / 1_000_000.0, **kw)


@compiles(_SecondsBetween, "postgresql")
def _seconds_between_postgresql(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    # EXTRACT is exact (numeric), rounded to a float once, as Python's total_seconds() is;
    # date_part's double adds the days of the interval to its time apart, rounding twice.
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM {later} - {earlier}) AS DOUBLE PRECISION)"


def _seconds_between(
    later: ColumnElement[Any], earlier: ColumnElement[Any]
) -> ColumnElement[float]:
    return _SecondsBetween(later, earlier)


class _NotNegative(FunctionElement[float]):
    """A number, or 0.0 where it is negative: the number is computed once per row, where
    `CASE WHEN x > 0 THEN x ...` computes it twice.
    """

    type = Float()
    inherit_cache = True


@compiles(_NotNegative, "sqlite")
def _not_negative_sqlite(element: _NotNegative, compiler: SQLCompiler, **kw: Any) -> str:
    return f"max({compiler.process(next(iter(element.clauses)), **kw)}, 0.0)"


@compiles(_NotNegative, "postgresql")
def _not_negative_postgresql(element: _NotNegative, compiler: SQLCompiler, **kw: Any) -> str:
    return f"GREATEST({compiler.process(next(iter(element.clauses)), **kw)}, 0.0)"


def _not_negative(value: ColumnElement[float]) -> ColumnElement[float]:
    return _NotNegative(value)


def _instant(name: str, value: datetime) -> ColumnElement[datetime]:
    return bindparam(name, value, type_=UTCDateTime)


def estimated_run_time(now: datetime) -> ColumnElement[float]:
    """A run's `estimated_run_time` at `now`, as the service computes it for its answer."""
    running = and_(
        task_run.c.state_type == "RUNNING",
        task_run.c.state_timestamp.is_not(None),
    )
    return case(
        (
            running,
            task_run.c.total_run_time
            + _seconds_between(_instant("now_run_time", now), task_run.c.state_timestamp),
        ),
        else_=task_run.c.total_run_time,
    )


def estimated_lateness(now: datetime) -> ColumnElement[float]:
    """A run's `estimated_start_time_delta` at `now`, as the service computes it."""
    expected, started = task_run.c.expected_start_time, task_run.c.start_time
    now_value = _instant("now_lateness", now)
    return case(
        (expected.is_(None), literal(0.0)),
        (started.is_not(None), _not_negative(_seconds_between(started, expected))),
        (
            and_(
                expected < now_value,
                or_(
                    task_run.c.state_type.is_(None),
                    task_run.c.state_type.not_in(_TERMINAL_STATE_TYPES),
                ),
            ),
            _seconds_between(now_value, expected),
        ),
        else_=literal(0.0),
    )


# ---------------------------------------------------------------------------------------
# Conditions


def everything() -> Condition:
    """Matches every run."""
    return true()


def nothing() -> Condition:
    """Matches no run."""
    return false()


def all_of(conditions: Sequence[Condition]) -> Condition:
    """Every condition holds (none given: every run)."""
    return and_(true(), *conditions) if conditions else true()


def any_of(conditions: Sequence[Condition]) -> Condition:
    """At least one condition holds (none given: every run, as in Prefect)."""
    return or_(*conditions) if conditions else true()


def id_in(ids: Sequence[UUID]) -> Condition:
    return task_run.c.id.in_(ids)


def name_in(names: Sequence[str]) -> Condition:
    return task_run.c.name.in_(names)


def name_contains(text: str) -> Condition:
    """The name contains `text`, literally, ASCII letters compared without case.

    `%`, `_` and the escape character are escaped.
    """
    folded = text.translate(_ASCII_LOWER)
    escaped = "".join(_LIKE_ESCAPE + c if c in "%_" + _LIKE_ESCAPE else c for c in folded)
    return _NameForLike(task_run.c.name).like(f"%{escaped}%", escape=_LIKE_ESCAPE)


class _NameForLike(FunctionElement[str]):
    """A name as LIKE compares it to a lower-case pattern: A-Z folded, no other letter."""

    type = Text()
    inherit_cache = True


@compiles(_NameForLike, "sqlite")
def _name_for_like_sqlite(element: _NameForLike, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's LIKE itself folds A-Z and nothing else; a lower() of every name made a scan
    # of the names about a third slower.
    (name,) = element.clauses
    return compiler.process(name, **kw)


@compiles(_NameForLike, "postgresql")
def _name_for_like_postgresql(element: _NameForLike, compiler: SQLCompiler, **kw: Any) -> str:
    # lower() under the "C" collation folds A-Z only; the trigram index is on lower(name).
    (name,) = element.clauses
    return compiler.process(func.lower(name), **kw)


# Up to this many tags, each is looked up on its own; more are counted in one pass, which
# keeps the statement small (SQLite limits an expression's depth, PostgreSQL plans each EXISTS).
_TAGS_LOOKED_UP_ONE_BY_ONE = 8


def has_all_tags(tags: Sequence[str]) -> Condition:
    """The run has every one of `tags`: index lookups in task_run_tag by tag."""
    distinct = list(dict.fromkeys(tags))
    if len(distinct) <= _TAGS_LOOKED_UP_ONE_BY_ONE:
        return all_of([_has_tag(tag) for tag in distinct])
    with_every_tag = (
        select(task_run_tag.c.task_run_id)
        .where(task_run_tag.c.tag.in_(distinct))
        .group_by(task_run_tag.c.task_run_id)
        .having(func.count() == len(distinct))
    )
    return task_run.c.id.in_(with_every_tag)


def _has_tag(tag: str) -> Condition:
    return exists().where(task_run_tag.c.task_run_id == task_run.c.id, task_run_tag.c.tag == tag)


def has_no_tags() -> Condition:
    # From the run's own list: task_run_tag leaves out the tags no filter can name.
    return func.json_array_length(task_run.c.tags) == 0


def state_type_in(state_types: Sequence[str]) -> Condition:
    return task_run.c.state_type.in_(state_types)


def state_name_in(state_names: Sequence[str]) -> Condition:
    return task_run.c.state_name.in_(state_names)


class TimeField(Enum):
    """The datetime columns a filter can bound."""

    START_TIME = "start_time"
    END_TIME = "end_time"
    EXPECTED_START_TIME = "expected_start_time"


def at_or_before(field: TimeField, instant: datetime) -> Condition:
    return task_run.c[field.value] <= instant


def at_or_after(field: TimeField, instant: datetime) -> Condition:
    return task_run.c[field.value] >= instant


def time_is_null(field: TimeField) -> Condition:
    return task_run.c[field.value].is_(None)


def time_is_set(field: TimeField) -> Condition:
    return task_run.c[field.value].is_not(None)


def flow_run_id_in(flow_run_ids: Sequence[UUID]) -> Condition:
    return task_run.c.flow_run_id.in_(flow_run_ids)


def without_flow_run() -> Condition:
    return task_run.c.flow_run_id.is_(None)


def with_flow_run() -> Condition:
    return task_run.c.flow_run_id.is_not(None)


# ---------------------------------------------------------------------------------------
# Orders


class Sort(Enum):
    """Prefect's sorts (TaskRunSort), each made total by the id."""

    ID_DESC = "ID_DESC"
    EXPECTED_START_TIME_ASC = "EXPECTED_START_TIME_ASC"
    EXPECTED_START_TIME_DESC = "EXPECTED_START_TIME_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"
    NEXT_SCHEDULED_START_TIME_ASC = "NEXT_SCHEDULED_START_TIME_ASC"
    END_TIME_DESC = "END_TIME_DESC"
    DURATION_ASC = "DURATION_ASC"
    DURATION_DESC = "DURATION_DESC"


# Sort -> (column, descending). Only the datetime columns can be NULL; `nulls_last` on a
# column that cannot would keep PostgreSQL from reading the index backwards.
_BY_COLUMN: dict[Sort, tuple[str, bool]] = {
    Sort.EXPECTED_START_TIME_ASC: ("expected_start_time", False),
    Sort.EXPECTED_START_TIME_DESC: ("expected_start_time", True),
    Sort.NAME_ASC: ("name", False),
    Sort.NAME_DESC: ("name", True),
    Sort.NEXT_SCHEDULED_START_TIME_ASC: ("next_scheduled_start_time", False),
    Sort.END_TIME_DESC: ("end_time", True),
}


def _directed(column: ColumnElement[Any], *, descending: bool) -> UnaryExpression[Any]:
    return column.desc() if descending else column.asc()


def order_by(sort: Sort, *, now: datetime) -> list[UnaryExpression[Any]]:
    """The ORDER BY of a sort: its field (NULLs last), then the id, in the sort's direction."""
    if sort is Sort.ID_DESC:
        return [task_run.c.id.desc()]
    if sort in _BY_COLUMN:
        name, descending = _BY_COLUMN[sort]
        column = task_run.c[name]
        field = _directed(column, descending=descending)
        return [
            field.nulls_last() if column.nullable else field,
            _directed(task_run.c.id, descending=descending),
        ]
    # Prefect's duration sorts: by estimated run time, then the newest expected start first.
    descending = sort is Sort.DURATION_DESC
    return [
        _directed(estimated_run_time(now), descending=descending),
        task_run.c.expected_start_time.desc().nulls_last(),
        _directed(task_run.c.id, descending=descending),
    ]


# ---------------------------------------------------------------------------------------
# Queries


class ListedTaskRun(NamedTuple):
    """A run and its current state as a list of runs answers them: the ids as their text,
    the JSON columns as the JSON text stored, instants as aware datetimes.

    The state's fields are None when the run never had a state; its id is `state_id`.
    """

    id: str
    created: datetime
    updated: datetime
    name: str
    flow_run_id: str | None
    task_key: str
    dynamic_key: str
    cache_key: str | None
    cache_expiration: datetime | None
    task_version: str | None
    empirical_policy: str
    tags: str
    labels: str
    task_inputs: str
    state_id: str | None
    state_type: str | None
    state_name: str | None
    state_timestamp: datetime | None
    run_count: int
    flow_run_run_count: int
    expected_start_time: datetime | None
    next_scheduled_start_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    total_run_time: float
    state_row_type: str | None
    state_row_name: str | None
    state_row_timestamp: datetime | None
    state_row_message: str | None
    state_row_data: str | None
    state_row_details: str | None


_UUID_COLUMNS = frozenset({"id", "flow_run_id", "state_id"})
_JSON_COLUMNS = frozenset({"empirical_policy", "tags", "labels", "task_inputs"})


def _listed_run_column(name: str) -> ColumnElement[Any]:
    column = task_run.c[name]
    if name in _UUID_COLUMNS:
        return uuid_text(column)
    if name in _JSON_COLUMNS:
        return json_text(column)
    return column


def _listed_columns() -> tuple[ColumnElement[Any], ...]:
    """The columns of a ListedTaskRun, in its order."""
    run_names = [name for name in ListedTaskRun._fields if not name.startswith("state_row_")]
    state = task_run_state.c
    state_columns = [
        state.type,
        state.name,
        state.timestamp,
        state.message,
        json_text(state.data),
        json_text(state.state_details),
    ]
    columns = [*(_listed_run_column(name) for name in run_names), *state_columns]
    return tuple(
        column.label(name) for name, column in zip(ListedTaskRun._fields, columns, strict=True)
    )


_LISTED_COLUMNS = _listed_columns()


# Built once: a SELECT of the 31 columns took 25 to 30 µs to build, for every list.
_SELECT_LISTED = select(*_LISTED_COLUMNS)
# One run by id, in the form a list gives its runs.
_LISTED_BY_ID = DriverStatement(
    _SELECT_LISTED.select_from(RUN_WITH_CURRENT_STATE).where(task_run.c.id == bindparam("id"))
)


def find_listed_task_run(connection: Connection, task_run_id: UUID) -> ListedTaskRun | None:
    """The run with this id and its current state, read as `list_task_runs` reads them."""
    row = _LISTED_BY_ID.first(connection, {"id": task_run_id})
    return None if row is None else ListedTaskRun._make(row)


def list_task_runs(
    connection: Connection,
    condition: Condition,
    *,
    sort: Sort,
    limit: int,
    offset: int,
    now: datetime,
) -> list[ListedTaskRun]:
    """The matching runs with their current states, in order, `offset` of them skipped: read
    in the form a list of runs answers them, without decoding the JSON columns or building
    UUID objects only to print them.
    """
    statement = _page_of_runs(condition, sort=sort, limit=limit, offset=offset, now=now)
    make = ListedTaskRun._make
    return [make(row) for row in connection.execute(statement).all()]


def _page_of_runs(
    condition: Condition, *, sort: Sort, limit: int, offset: int, now: datetime
) -> Select[Any]:
    """The matching runs joined to their current states, in order, as ListedTaskRun rows.

    The runs are chosen and ordered first and joined to their states only then, so that the
    database walks an index of task_run alone.
    """
    page = (
        select(task_run.c.id)
        .where(condition)
        .order_by(*order_by(sort, now=now))
        .limit(limit)
        .offset(offset)
        .subquery("page")
    )
    return _SELECT_LISTED.select_from(
        page.join(task_run, task_run.c.id == page.c.id).outerjoin(
            task_run_state, task_run_state.c.id == task_run.c.state_id
        )
    ).order_by(*order_by(sort, now=now))


def count_task_runs(connection: Connection, condition: Condition) -> int:
    """How many runs match."""
    statement = select(func.count()).select_from(task_run).where(condition)
    return int(connection.execute(statement).scalar_one())


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """The runs of one interval in one state."""

    interval: int
    state_type: str
    state_name: str
    count_runs: int
    sum_estimated_run_time: float
    sum_estimated_lateness: float


def task_run_history(
    connection: Connection,
    condition: Condition,
    *,
    start: datetime,
    end: datetime | None,
    interval: timedelta,
    now: datetime,
) -> list[HistoryRow]:
    """The matching runs expected to start in [start, end) (from `start` on, without an
    `end`), counted by interval and state.

    Interval `i` holds the runs expected to start in [start + i * interval, start + (i + 1) *
    interval); the intervals are numbered in whole microseconds, exactly on both databases.
    """
    number = _interval_number(connection.dialect.name, start=start, interval=interval)
    statement = (
        select(
            number,
            task_run.c.state_type,
            task_run.c.state_name,
            func.count().label("count_runs"),
            # Each run's estimate counts from 0, as in Prefect: a negative one (a client
            # clock ahead of the server's) does not take from the others.
            func.sum(_not_negative(estimated_run_time(now))).label("run_time"),
            func.sum(estimated_lateness(now)).label("lateness"),
        )
        .where(
            condition,
            task_run.c.state_type.is_not(None),
            task_run.c.expected_start_time >= start,
            true() if end is None else task_run.c.expected_start_time < end,
        )
        .group_by(number, task_run.c.state_type, task_run.c.state_name)
    )
    return [
        HistoryRow(
            interval=_as_number(row.interval, start=start, interval=interval),
            state_type=row.state_type,
            state_name=row.state_name or "",
            count_runs=int(row.count_runs),
            sum_estimated_run_time=float(row.run_time or 0.0),
            sum_estimated_lateness=float(row.lateness or 0.0),
        )
        for row in connection.execute(statement)
    ]


def _interval_number(dialect: str, *, start: datetime, interval: timedelta) -> Any:
    """Which interval a run's expected start falls in, computed by the database.

    PostgreSQL's date_bin gives the interval's start, exactly (it counts in microseconds);
    on SQLite the number of the interval is counted from the stored text.
    """
    expected = task_run.c.expected_start_time
    if dialect == "postgresql":
        stride = bindparam("stride", interval, type_=Interval)
        origin = bindparam("origin", start, type_=UTCDateTime)
        return func.date_bin(stride, expected, origin, type_=UTCDateTime).label("interval")
    offset = _EpochMicroseconds(expected) - bindparam(
        "start_microseconds", epoch_microseconds(start), type_=BigInteger
    )
    divisor = bindparam("interval_microseconds", interval // _MICROSECOND, type_=BigInteger)
    return (offset // divisor).label("interval")


def _as_number(value: int | datetime, *, start: datetime, interval: timedelta) -> int:
    """The interval's number, from its number or from its start."""
    if isinstance(value, datetime):
        return (value - start) // interval
    return int(value)

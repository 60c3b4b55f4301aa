"""A bulk loader of task runs for the query bench and the query-plan tests (not the API).

The rows are what the service itself would store after runs went through their states: a
run's current state copied onto it, and its history in `task_run_state`. Every other table
with a foreign key to `task_run.id` and a `tag` column (an index of the runs' tags) gets one
row per tag; its other columns are copied from the run by name. What each table needs is
read from the Table objects of app/db/tables.py, so that a new column or side table either
gets its values or fails loudly, by name.

PostgreSQL is loaded with COPY, SQLite with executemany, in large transactions.

    python -m tests.bench.seed DATABASE_URL --runs 200000
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import JSON, Column, Connection, Table, create_engine, event
from sqlalchemy.engine import make_url

from app.db import tables
from app.db.database import normalise_url
from app.db.migrate import upgrade
from generated import models

FLOW_RUNS = 10_000
# Runs without a flow run (autonomous tasks, background tasks).
SHARE_WITHOUT_FLOW_RUN = 0.03
DAYS = 30
TASK_FUNCTIONS = 1_000
MAX_TAGS = 4
RANDOM_SEED = 9
# Runs generated and written per transaction.
BATCH_RUNS = 20_000
PROGRESS_EVERY_RUNS = 100_000
# A state's details as the service stores them: every field of StateDetails, in its order.
STORED_DETAILS = models.StateDetails().model_dump(mode="json")

# Fifty tags, areas by kinds; a few are common, most are rare (weights 1/rank, cumulative).
TAG_AREAS = (
    "etl",
    "ml",
    "billing",
    "reports",
    "ingest",
    "search",
    "alerts",
    "backup",
    "sync",
    "qa",
)
TAG_KINDS = ("nightly", "hourly", "critical", "dev", "prod")
TAGS = tuple(f"{area}-{kind}" for kind in TAG_KINDS for area in TAG_AREAS)
TAG_WEIGHTS = tuple(itertools.accumulate(1 / rank for rank in range(1, len(TAGS) + 1)))


@dataclass(frozen=True)
class StateKind:
    """A current state runs end up in, how often, and the states they passed through."""

    type: str
    name: str
    share: float
    history: tuple[tuple[str, str], ...]

    @property
    def ran(self) -> bool:
        return any(state_type == "RUNNING" for state_type, _ in self.history)

    @property
    def finished(self) -> bool:
        return self.type in {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


_PENDING = ("PENDING", "Pending")
_RUNNING = ("RUNNING", "Running")
# Every state type; shares add up to 1.
STATE_KINDS = (
    StateKind("COMPLETED", "Completed", 0.55, (_PENDING, _RUNNING, ("COMPLETED", "Completed"))),
    StateKind("FAILED", "Failed", 0.08, (_PENDING, _RUNNING, ("FAILED", "Failed"))),
    StateKind("CRASHED", "Crashed", 0.02, (_PENDING, _RUNNING, ("CRASHED", "Crashed"))),
    StateKind("CANCELLED", "Cancelled", 0.04, (_PENDING, ("CANCELLED", "Cancelled"))),
    StateKind("CANCELLING", "Cancelling", 0.01, (_PENDING, _RUNNING, ("CANCELLING", "Cancelling"))),
    StateKind("PAUSED", "Paused", 0.02, (_PENDING, _RUNNING, ("PAUSED", "Paused"))),
    StateKind("RUNNING", "Running", 0.05, (_PENDING, _RUNNING)),
    StateKind("PENDING", "Pending", 0.05, (_PENDING,)),
    StateKind("SCHEDULED", "Scheduled", 0.13, (("SCHEDULED", "Scheduled"),)),
    StateKind(
        "SCHEDULED", "AwaitingRetry", 0.05, (_PENDING, _RUNNING, ("SCHEDULED", "AwaitingRetry"))
    ),
)  # fmt: skip
# Cumulative, as random.choices takes them fastest.
STATE_WEIGHTS = tuple(itertools.accumulate(kind.share for kind in STATE_KINDS))


@dataclass(frozen=True)
class Dataset:
    """What was loaded, and values the query cells pick their criteria from."""

    runs: int
    rows: dict[str, int]
    seconds: float
    # The window of expected start times: [window_end - DAYS, window_end).
    window_end: datetime
    # The flow runs, those with the most task runs first.
    flow_run_ids: tuple[str, ...]
    tags: tuple[str, ...] = TAGS

    @property
    def window_start(self) -> datetime:
        return self.window_end - timedelta(days=DAYS)

    def describe(self) -> str:
        counts = ", ".join(f"{count:,} {table}" for table, count in self.rows.items())
        return f"{counts} in {self.seconds:.1f} s ({self.runs / self.seconds:,.0f} runs/s)"


# ---------------------------------------------------------------------------------------
# Generating runs


@dataclass
class Generator:
    """Makes the rows of each run, deterministically from RANDOM_SEED."""

    runs: int
    window_end: datetime
    rng: random.Random = field(default_factory=lambda: random.Random(RANDOM_SEED))
    flow_run_ids: tuple[uuid.UUID, ...] = ()
    runs_per_flow_run: Counter[uuid.UUID] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.flow_run_ids = tuple(self._uuid4() for _ in range(FLOW_RUNS))

    def busiest_flow_runs(self) -> tuple[str, ...]:
        """The flow runs generated so far, those with the most task runs first."""
        return tuple(str(flow_run_id) for flow_run_id, _ in self.runs_per_flow_run.most_common())

    def _uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _uuid7(self, moment: datetime) -> uuid.UUID:
        """Time-ordered, as the service's own ids: new rows go at the end of the index."""
        milliseconds = int(moment.timestamp() * 1000)
        random_bits = self.rng.getrandbits(74)
        version_and_a = (0x7 << 12) | (random_bits >> 62)
        variant_and_b = (0b10 << 62) | (random_bits & ((1 << 62) - 1))
        return uuid.UUID(int=(milliseconds << 80) | (version_and_a << 64) | variant_and_b)

    def run_rows(self, number: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run `number`'s task_run row and its task_run_state rows, oldest first."""
        rng = self.rng
        span = timedelta(days=DAYS)
        # Evenly spread with jitter, so that ids (by creation time) ascend with the number.
        expected = self.window_end - span + span * ((number + rng.random()) / self.runs)
        created = expected - timedelta(seconds=rng.uniform(0, 60))
        kind = rng.choices(STATE_KINDS, cum_weights=STATE_WEIGHTS)[0]
        function = rng.randrange(TASK_FUNCTIONS)
        flow_run_id = (
            None if rng.random() < SHARE_WITHOUT_FLOW_RUN else rng.choice(self.flow_run_ids)
        )
        if flow_run_id is not None:
            self.runs_per_flow_run[flow_run_id] += 1
        run_id = self._uuid7(created)
        start = expected + timedelta(seconds=rng.expovariate(1 / 2)) if kind.ran else None
        duration = rng.lognormvariate(1.5, 1.5) if kind.ran else 0.0
        end = start + timedelta(seconds=duration) if start and kind.finished else None
        states = self._state_rows(
            run_id=run_id, flow_run_id=flow_run_id, kind=kind, created=created, start=start, end=end
        )
        current = states[-1]
        run = {
            "id": run_id,
            "created": created,
            "updated": current["timestamp"],
            "name": f"task-{function}-{rng.getrandbits(12):03x}",
            "flow_run_id": flow_run_id,
            "task_key": f"task-{function}",
            "dynamic_key": str(number),
            "empirical_policy": {
                "max_retries": 0,
                "retry_delay_seconds": 0.0,
                "retries": None,
                "retry_delay": None,
                "retry_jitter_factor": None,
            },
            "tags": sorted(
                set(rng.choices(TAGS, cum_weights=TAG_WEIGHTS, k=rng.randint(0, MAX_TAGS)))
            ),
            "labels": {} if flow_run_id is None else {"prefect.flow-run.id": str(flow_run_id)},
            "task_inputs": {},
            "state_id": current["id"],
            "state_type": current["type"],
            "state_name": current["name"],
            "state_timestamp": current["timestamp"],
            "run_count": 1 if kind.ran else 0,
            "flow_run_run_count": 1 if kind.ran else 0,
            "expected_start_time": expected,
            "next_scheduled_start_time": expected if kind.type == "SCHEDULED" else None,
            "start_time": start,
            "end_time": end,
            "total_run_time": (end - start).total_seconds() if start and end else 0.0,
        }
        return run, states

    def _state_rows(
        self,
        *,
        run_id: uuid.UUID,
        flow_run_id: uuid.UUID | None,
        kind: StateKind,
        created: datetime,
        start: datetime | None,
        end: datetime | None,
    ) -> list[dict[str, Any]]:
        """The run's history: one row per state, each a little after the one before."""
        rows = []
        moment = created
        for state_type, state_name in kind.history:
            if state_type == "RUNNING" and start is not None:
                moment = start
            elif state_type == kind.type and end is not None:
                moment = end
            else:
                moment = moment + timedelta(milliseconds=self.rng.randint(1, 500))
            rows.append(
                {
                    "id": self._uuid7(moment),
                    "created": moment,
                    "task_run_id": run_id,
                    "type": state_type,
                    "name": state_name,
                    "timestamp": moment,
                    "message": None,
                    "data": None,
                    "state_details": {
                        **STORED_DETAILS,
                        "flow_run_id": None if flow_run_id is None else str(flow_run_id),
                        "task_run_id": str(run_id),
                        "scheduled_time": _json_instant(moment)
                        if state_type == "SCHEDULED"
                        else None,
                    },
                }
            )
        return rows


def _json_instant(instant: datetime) -> str:
    """An instant as a model dumped to JSON writes it ("...Z", no zero microseconds)."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------
# Rows for each table, derived from the Table objects


def tag_tables() -> list[Table]:
    """Tables indexing runs by tag: a foreign key to task_run.id and a `tag` column."""
    found = []
    for table in tables.metadata.sorted_tables:
        if table is tables.task_run or "tag" not in table.columns:
            continue
        if _run_reference(table) is not None:
            found.append(table)
    return found


def _run_reference(table: Table) -> Column[Any] | None:
    """The column of `table` that refers to task_run.id, if any."""
    for column in table.columns:
        if any(key.column is tables.task_run.c.id for key in column.foreign_keys):
            return column
    return None


def tag_rows_statement(table: Table, dialect: str) -> str:
    """INSERT ... SELECT of a row of `table` for each tag of each run: the reference to the
    run, the tag, and the run's columns of the same names; the rest left to their defaults.
    """
    reference = _run_reference(table)
    assert reference is not None
    values = {reference.name: "run.id", "tag": "tag.value"}
    for column in table.columns:
        if column.name not in values and column.name in tables.task_run.columns:
            values[column.name] = f'run."{column.name}"'
    for column in table.columns:
        required = not column.nullable and column.server_default is None and column.default is None
        if column.name not in values and required:
            raise ValueError(f"tests/bench/seed.py has no value for {table.name}.{column.name}")
    elements = (
        "json_array_elements_text(run.tags::json) AS tag(value)"
        if dialect == "postgresql"
        else "json_each(run.tags) AS tag"
    )
    names = ", ".join(f'"{name}"' for name in values)
    return (
        f'INSERT INTO "{table.name}" ({names}) SELECT {", ".join(values.values())}'
        f" FROM task_run AS run CROSS JOIN {elements}"
    )


def complete(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with a NULL in every nullable column of `table` the loader has no value for;
    an error naming a required column it does not know. (The rows all have the same keys.)
    """
    if not rows:
        return rows
    nulls: dict[str, None] = {}
    for column in table.columns:
        if column.name in rows[0] or column.server_default is not None or column.default:
            continue
        if not column.nullable:
            raise ValueError(f"tests/bench/seed.py has no value for {table.name}.{column.name}")
        nulls[column.name] = None
    return [{**row, **nulls} for row in rows] if nulls else rows


@dataclass
class Batch:
    """The rows of a number of runs, by table, in the order they may be inserted."""

    rows: dict[Table, list[dict[str, Any]]]

    @classmethod
    def of(cls, generator: Generator, numbers: range) -> Batch:
        runs: list[dict[str, Any]] = []
        states: list[dict[str, Any]] = []
        for number in numbers:
            run, history = generator.run_rows(number)
            runs.append(run)
            states.extend(history)
        return cls(
            {
                tables.task_run: complete(tables.task_run, runs),
                tables.task_run_state: complete(tables.task_run_state, states),
            }
        )


# ---------------------------------------------------------------------------------------
# Writing


Writer = Callable[[Batch], None]


def _copy_rows(table: Table, rows: list[dict[str, Any]]) -> Iterator[list[Any]]:
    """The rows as COPY takes them: JSON columns as their text, the rest as psycopg adapts
    them.
    """
    names = list(rows[0])
    json_names = {name for name in names if isinstance(table.c[name].type, JSON)}
    for row in rows:
        values = dict(row)
        for name in json_names:
            if values[name] is not None:
                values[name] = json.dumps(values[name], separators=(",", ":"))
        yield [values[name] for name in names]


def copy_batch(connection: psycopg.Connection[Any], batch: Batch) -> None:
    """One transaction of COPYs; the run's deferred state_id foreign key holds at commit."""
    with connection.transaction(), connection.cursor() as cursor:
        for table, rows in batch.rows.items():
            if not rows:
                continue
            quoted = ", ".join(f'"{name}"' for name in rows[0])
            with cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
                for values in _copy_rows(table, rows):
                    copy.write_row(values)


def insert_batch(connection: Connection, batch: Batch) -> None:
    """One transaction of executemany INSERTs."""
    with connection.begin():
        for table, rows in batch.rows.items():
            if rows:
                connection.execute(table.insert(), rows)


@dataclass(frozen=True)
class Target:
    """Where the rows go: a writer of batches, and what to do once all are in (fill the tag
    tables, build the indexes, ANALYZE; returns the rows put in each tag table).
    """

    write: Writer
    finish: Callable[[], dict[str, int]]


def loaded_tables() -> list[str]:
    """The tables the loader writes to."""
    return [tables.task_run.name, tables.task_run_state.name, *(t.name for t in tag_tables())]


# Secondary indexes are dropped before the load and built again after it, as each
# database's own definitions say: building an index once is far cheaper than keeping it up
# to date row by row. Primary keys and constraints stay.
_POSTGRESQL_INDEXES = """
    SELECT indexname, indexdef FROM pg_indexes
    WHERE schemaname = current_schema() AND tablename = ANY(%s)
      AND indexname NOT IN (SELECT conname FROM pg_constraint)
"""
# Statistics targets set on an index's columns (an expression's): a rebuilt index has none.
_POSTGRESQL_INDEX_STATISTICS = """
    SELECT index.relname, attribute.attnum, attribute.attstattarget
    FROM pg_attribute AS attribute JOIN pg_class AS index ON index.oid = attribute.attrelid
    WHERE index.relnamespace = current_schema()::regnamespace AND index.relname = ANY(%s)
      AND attribute.attstattarget >= 0
"""
_SQLITE_INDEXES = (
    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    " AND tbl_name IN ({})"
)


@contextmanager
def _postgresql_target(database_url: str) -> Iterator[Target]:
    libpq_url = make_url(database_url).set(drivername="postgresql")
    dsn = libpq_url.render_as_string(hide_password=False)
    with psycopg.connect(dsn, options="-c timezone=UTC -c maintenance_work_mem=256MB") as db:
        indexes = db.execute(_POSTGRESQL_INDEXES, [loaded_tables()]).fetchall()
        statistics = db.execute(
            _POSTGRESQL_INDEX_STATISTICS, [[name for name, _definition in indexes]]
        ).fetchall()
        for name, _definition in indexes:
            db.execute(f'DROP INDEX "{name}"')
        db.commit()

        def finish() -> dict[str, int]:
            counts = {
                table.name: db.execute(tag_rows_statement(table, "postgresql")).rowcount
                for table in tag_tables()
            }
            for _name, definition in indexes:
                db.execute(definition)
            for name, column, target in statistics:
                db.execute(f'ALTER INDEX "{name}" ALTER COLUMN {column} SET STATISTICS {target}')
            db.commit()
            # VACUUM as autovacuum would have done by now: it sets the visibility map, without
            # which an index-only scan (a count) reads every row it counts from the table.
            db.autocommit = True
            quoted = ", ".join(f'"{name}"' for name in loaded_tables())
            db.execute(f"VACUUM (ANALYZE) {quoted}")
            return counts

        yield Target(lambda batch: copy_batch(db, batch), finish)


def _quick_sqlite_writes(dbapi_connection: Any, _record: Any) -> None:
    # A throw-away load: a crash loses it anyway, so no waiting for the disk.
    dbapi_connection.execute("PRAGMA synchronous=OFF")


@contextmanager
def _sqlite_target(database_url: str) -> Iterator[Target]:
    engine = create_engine(normalise_url(database_url))
    event.listen(engine, "connect", _quick_sqlite_writes)
    try:
        with engine.connect() as db:
            names = loaded_tables()
            query = _SQLITE_INDEXES.format(", ".join("?" for _ in names))
            with db.begin():
                indexes = db.exec_driver_sql(query, tuple(names)).all()
                for name, _definition in indexes:
                    db.exec_driver_sql(f'DROP INDEX "{name}"')

            def finish() -> dict[str, int]:
                with db.begin():
                    counts = {
                        table.name: db.exec_driver_sql(tag_rows_statement(table, "sqlite")).rowcount
                        for table in tag_tables()
                    }
                    for _name, definition in indexes:
                        db.exec_driver_sql(definition)
                    db.exec_driver_sql("ANALYZE")
                return counts

            yield Target(lambda batch: insert_batch(db, batch), finish)
    finally:
        engine.dispose()


def open_target(database_url: str) -> AbstractContextManager[Target]:
    """The writer of `database_url`'s kind, open for the load; closed afterwards."""
    if normalise_url(database_url).get_backend_name() == "postgresql":
        return _postgresql_target(database_url)
    return _sqlite_target(database_url)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while batches are built and written.

    Each batch is a few hundred thousand row dicts that refcounting frees once written; the
    collector only walked them, and everything before them, again and again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def seed(
    database_url: str,
    *,
    runs: int,
    window_end: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """Load `runs` task runs into the (migrated, empty) database, then ANALYZE it (and
    VACUUM it on PostgreSQL).
    """
    end = (window_end or datetime.now(UTC)).replace(microsecond=0)
    generator = Generator(runs=runs, window_end=end)
    counts = {tables.task_run.name: 0, tables.task_run_state.name: 0}
    began = time.monotonic()
    reported = 0
    with open_target(database_url) as target, _collector_paused():
        for first in range(0, runs, BATCH_RUNS):
            done = min(first + BATCH_RUNS, runs)
            batch = Batch.of(generator, range(first, done))
            target.write(batch)
            for table, rows in batch.rows.items():
                counts[table.name] += len(rows)
            if progress is not None and done - reported >= PROGRESS_EVERY_RUNS:
                reported = done
                elapsed = time.monotonic() - began
                progress(f"    {done:,}/{runs:,} runs in {elapsed:.0f} s ({done / elapsed:,.0f}/s)")
        counts.update(target.finish())
    return Dataset(
        runs=runs,
        rows=counts,
        seconds=time.monotonic() - began,
        window_end=end,
        flow_run_ids=generator.busiest_flow_runs(),
    )


def main(argv: list[str] | None = None) -> int:
    """Migrate DATABASE_URL and load it (for trying queries by hand)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.seed", description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("--runs", type=int, default=200_000)
    arguments = parser.parse_args(argv)
    upgrade(arguments.database_url)
    dataset = seed(arguments.database_url, runs=arguments.runs, progress=_say)
    _say(f"loaded {dataset.describe()}")
    return 0


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201


if __name__ == "__main__":
    raise SystemExit(main())

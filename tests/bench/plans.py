"""The SQL the service runs for a request, and the database's plan for it.

The app is built in process on the bench's database, as the tests build it; a listener on
its engine records each statement and its parameters while one request goes through the
test client. Each SELECT is then explained with the same parameters (SQLite: EXPLAIN QUERY
PLAN; PostgreSQL: EXPLAIN), and a full scan of the task-run table is flagged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from connexion import FlaskApp
from sqlalchemy import Engine, event

from app.main import create_app, database_of
from app.settings import Settings

TABLE = "task_run"
# A scan of every row of the table: not one through an index.
SQLITE_FULL_SCAN = re.compile(r"^SCAN (\w+)$")
# A walk through a whole index of the table, in its order: all of it unless a LIMIT stops it.
SQLITE_INDEX_WALK = re.compile(r"^SCAN (\w+) USING (?:COVERING )?INDEX \w+$")
POSTGRESQL_FULL_SCAN = re.compile(rf"Seq Scan on {TABLE}\b")
# An index scan of the table; without an "Index Cond" it walks the whole index in its order.
POSTGRESQL_INDEX_SCAN = re.compile(rf"Index (?:Only )?Scan (?:Backward )?using \w+ on {TABLE}\b")


@dataclass(frozen=True)
class Statement:
    """One statement as the driver received it."""

    sql: str
    parameters: Any


@dataclass(frozen=True)
class StatementPlan:
    """A SELECT, its plan (one line per step) and the steps that scan the whole table."""

    sql: str
    plan: list[str]
    full_scans: list[str]
    index_walks: list[str] = field(default_factory=list)


@dataclass
class RequestPlans:
    """What one request made the service run."""

    status: int
    statements: list[StatementPlan] = field(default_factory=list)

    @property
    def full_scans(self) -> list[str]:
        return [scan for statement in self.statements for scan in statement.full_scans]


def selects(statements: Sequence[Statement]) -> list[Statement]:
    """The statements that read (others, like SQLite's BEGIN, have no plan worth showing)."""
    return [s for s in statements if s.sql.lstrip().upper().startswith(("SELECT", "WITH"))]


@contextmanager
def recording(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement `engine` sends to the driver while the block runs."""
    statements: list[Statement] = []

    def record(
        _connection: Any,
        _cursor: Any,
        sql: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        statements.append(Statement(sql, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain(engine: Engine, statement: Statement) -> list[str]:
    """The database's plan of `statement` with its parameters, one line per step."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters
            ).all()
            return _sqlite_tree(rows)
        rows = connection.exec_driver_sql(f"EXPLAIN {statement.sql}", statement.parameters).all()
        return [str(row[0]) for row in rows]


def _sqlite_tree(rows: Sequence[Any]) -> list[str]:
    """EXPLAIN QUERY PLAN's rows (id, parent, _, detail) as indented lines."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + str(detail))
    return lines


def aliases_of_table(sql: str) -> set[str]:
    """The names `sql` gives the task-run table: itself and any `task_run AS x`."""
    names = {TABLE}
    names.update(re.findall(rf'\b"?{TABLE}"?\s+AS\s+"?(\w+)"?', sql, flags=re.IGNORECASE))
    return names


def full_scans(dialect: str, sql: str, plan: Sequence[str]) -> list[str]:
    """The steps of `plan` that read every row of the task-run table."""
    if dialect == "sqlite":
        names = aliases_of_table(sql)
        return [
            line.strip()
            for line in plan
            if (found := SQLITE_FULL_SCAN.match(line.strip())) and found.group(1) in names
        ]
    return [line.strip() for line in plan if POSTGRESQL_FULL_SCAN.search(line.strip())]


def index_walks(dialect: str, sql: str, plan: Sequence[str]) -> list[str]:
    """The steps that walk a whole index of the task-run table (not flagged as full scans:
    with a LIMIT they stop early, as paging in index order does).
    """
    if dialect != "sqlite":
        return [
            line.strip()
            for number, line in enumerate(plan)
            if POSTGRESQL_INDEX_SCAN.search(line)
            and not any(detail.startswith("Index Cond:") for detail in _details(plan, number))
        ]
    names = aliases_of_table(sql)
    return [
        line.strip()
        for line in plan
        if (found := SQLITE_INDEX_WALK.match(line.strip())) and found.group(1) in names
    ]


def _details(plan: Sequence[str], number: int) -> list[str]:
    """The lines of PostgreSQL's plan that describe the step on line `number` (its "Index
    Cond", "Filter", ...): those after it, up to the next step ("->").
    """
    details = []
    for line in plan[number + 1 :]:
        if line.lstrip().startswith("->"):
            break
        details.append(line.strip())
    return details


def plans_of_request(app: FlaskApp, path: str, body: dict[str, Any]) -> RequestPlans:
    """Send one request through `app` and explain every SELECT it ran."""
    engine = database_of(app).engine
    with recording(engine) as statements, app.test_client() as client:
        status = client.post(path, json=body).status_code
    result = RequestPlans(status=status)
    for statement in selects(statements):
        plan = explain(engine, statement)
        result.statements.append(
            StatementPlan(
                sql=statement.sql,
                plan=plan,
                full_scans=full_scans(engine.dialect.name, statement.sql, plan),
                index_walks=index_walks(engine.dialect.name, statement.sql, plan),
            )
        )
    return result


@contextmanager
def service_in_process(database_url: str) -> Iterator[FlaskApp]:
    """The service on `database_url`, in this process, as the tests build it."""
    app = create_app(Settings(database_url=database_url))
    try:
        yield app
    finally:
        database_of(app).dispose()

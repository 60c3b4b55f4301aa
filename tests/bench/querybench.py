"""The query bench: a large table of task runs, each query cell under wrk, and its plans.

Our service gets a database loaded by tests/bench/seed.py before it starts; Prefect's
server gets its runs through its own API (its tables are its own), made from the same
generator. Each cell's request is first sent a few times to warm the caches and check that
it succeeds; then wrk sends it at QUERY_CONCURRENCY for the plan's seconds, repeatedly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from app.db.migrate import upgrade
from tests.bench.plans import RequestPlans, plans_of_request, service_in_process
from tests.bench.queries import QUERY_CONCURRENCY, QueryCell, query_cells
from tests.bench.runner import Cell, Plan, Repetition, ServerRun, describe, measured_wrk_run
from tests.bench.seed import Dataset, Generator, seed
from tests.bench.servers import (
    OURS,
    PREFECT_CREATE_THREADS,
    Server,
    post_setting_up,
    serve_ours,
    serve_prefect,
)
from tests.bench.wrk import write_script

# The tables the targets are set for; QUICK=1 loads a small one instead (and says so).
FULL_RUNS = {"sqlite": 200_000, "postgresql": 1_000_000}
QUICK_RUNS = 20_000
PREFECT_RUNS = 10_000
PREFECT_QUICK_RUNS = 1_000
PREFECT_FLOW_RUNS = 100
WARM_UP_REQUESTS = 5

Progress = Callable[..., None]


@dataclass
class QueryRun:
    """The query cells measured against one server on one database, with their plans."""

    run: ServerRun
    runs: int
    quick: bool
    load: str = ""
    cells: list[QueryCell] = field(default_factory=list)
    plans: dict[str, RequestPlans] = field(default_factory=dict)
    # A cell whose warm-up request failed: its status and the start of its answer.
    failures: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.run.as_json(),
            "runs": self.runs,
            "quick": self.quick,
            "load": self.load,
            "requests": {cell.name: {"path": cell.path, "body": cell.body} for cell in self.cells},
            "warm_up_failures": self.failures,
            "plans": {
                name: {
                    "status": plans.status,
                    "statements": [
                        {
                            "sql": s.sql,
                            "plan": s.plan,
                            "full_scans": s.full_scans,
                            "index_walks": s.index_walks,
                        }
                        for s in plans.statements
                    ],
                }
                for name, plans in self.plans.items()
            },
        }


def table_size(system: str, database: str, *, quick: bool, override: int | None) -> int:
    """How many runs the table of `system` on `database` gets."""
    if override is not None:
        return override
    if system == OURS:
        return QUICK_RUNS if quick else FULL_RUNS[database]
    return PREFECT_QUICK_RUNS if quick else PREFECT_RUNS


def measure_queries(
    system: str,
    database: str,
    directory: Path,
    plan: Plan,
    *,
    runs: int,
    workers: int,
    prefect_venv: Path,
    progress: Progress,
) -> QueryRun:
    """Load a table, start the server on it, measure every query cell (and print plans)."""
    directory.mkdir(parents=True, exist_ok=True)
    result = QueryRun(run=ServerRun(system=system, database=database), runs=runs, quick=plan.quick)
    if system == OURS:
        loaded: dict[str, Any] = {}

        def prepare(database_url: str) -> None:
            upgrade(database_url)
            progress(f"  loading {runs:,} runs into {database} (tests/bench/seed.py)")
            loaded["dataset"] = seed(database_url, runs=runs, progress=progress)
            loaded["url"] = database_url

        with serve_ours(database, directory, workers=workers, prepare=prepare) as server:
            dataset: Dataset = loaded["dataset"]
            result.load = f"loaded {dataset.describe()}"
            progress(f"  {result.load}")
            result.cells = query_cells(dataset)
            result.plans = explain_cells(loaded["url"], result.cells)
            run_cells(server, result, plan, directory, progress)
    else:
        with serve_prefect(database, directory, prefect_venv=prefect_venv) as server:
            dataset = load_through_api(server, runs, progress)
            result.load = f"created {dataset.describe()} through its API"
            progress(f"  {result.load}")
            result.cells = query_cells(dataset)
            run_cells(server, result, plan, directory, progress)
    return result


def explain_cells(database_url: str, cells: list[QueryCell]) -> dict[str, RequestPlans]:
    """Each cell's statements and plans, from the service in this process."""
    with service_in_process(database_url) as app:
        return {cell.name: plans_of_request(app, cell.path, cell.body) for cell in cells}


def run_cells(
    server: Server, result: QueryRun, plan: Plan, directory: Path, progress: Progress
) -> None:
    """Warm every cell up, then measure each at QUERY_CONCURRENCY, repetition by repetition."""
    script = write_script("query", directory)
    result.run.command = server.command
    result.run.worker_pids = server.worker_pids()
    result.failures = warm_up(server, result.cells)
    for name, failure in result.failures.items():
        progress(f"  {name}: the warm-up request failed: {failure}")
    result.run.cells = [Cell(cell.name, QUERY_CONCURRENCY) for cell in result.cells]
    total = len(result.cells) * plan.repetitions
    for repetition in range(plan.repetitions):
        for index, (query, cell) in enumerate(zip(result.cells, result.run.cells, strict=True)):
            number = repetition * len(result.cells) + index + 1
            progress(
                f"  [{number}/{total}] {server.system} {server.database} {query.name}"
                f" c={QUERY_CONCURRENCY} rep {repetition + 1}/{plan.repetitions}: ",
                end="",
            )
            measured_repetition = run_query(server, script, query, plan.seconds)
            cell.repetitions.append(measured_repetition)
            progress(describe(measured_repetition))
    result.run.log_tail = server.log_tail()
    result.run.log_tracebacks = server.log_text().count("Traceback (most recent call last)")


def warm_up(server: Server, cells: list[QueryCell]) -> dict[str, str]:
    """Send each cell's request a few times; the cells whose request did not succeed."""
    failures: dict[str, str] = {}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for cell in cells:
            for _ in range(WARM_UP_REQUESTS):
                response = client.post(cell.path, json=cell.body)
                if not response.is_success:
                    failures[cell.name] = f"{response.status_code} {response.text[:300]}"
                    break
    return failures


def run_query(server: Server, script: Path, cell: QueryCell, seconds: int) -> Repetition:
    """One wrk run of the cell's request, with the CPU time and RSS used around it."""
    return measured_wrk_run(
        server,
        script,
        concurrency=QUERY_CONCURRENCY,
        seconds=seconds,
        arguments=[cell.path, cell.body_text],
    )


# ---------------------------------------------------------------------------------------
# Prefect's table, through its API


def prefect_body(run: dict[str, Any], flow_run_id: str) -> dict[str, Any]:
    """Prefect's create request for a generated run, in the run's current state."""
    state: dict[str, Any] = {"type": run["state_type"], "name": run["state_name"]}
    if run["state_type"] == "SCHEDULED":
        state["state_details"] = {"scheduled_time": run["expected_start_time"].isoformat()}
    return {
        "name": run["name"],
        "task_key": run["task_key"],
        "dynamic_key": run["dynamic_key"],
        "flow_run_id": flow_run_id,
        "tags": run["tags"],
        "state": state,
    }


def load_through_api(server: Server, runs: int, progress: Progress) -> Dataset:
    """`runs` task runs in PREFECT_FLOW_RUNS flow runs, created through the server's API."""
    began = time.monotonic()
    window_end = datetime.now(UTC)
    generator = Generator(runs=runs, window_end=window_end)
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        flow_run_ids = [server.new_flow_run_id(client) for _ in range(PREFECT_FLOW_RUNS)]
        bodies = [
            prefect_body(generator.run_rows(number)[0], flow_run_ids[number % PREFECT_FLOW_RUNS])
            for number in range(runs)
        ]
        progress(f"  creating {runs:,} runs through {server.system}'s API")

        def create(body: dict[str, Any]) -> None:
            post_setting_up(client, "/api/task_runs/", body).raise_for_status()

        # On SQLite, Prefect's server answers concurrent creates with 503 "database is
        # locked" more often than its client would retry: one at a time there.
        threads = 1 if server.database == "sqlite" else PREFECT_CREATE_THREADS
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for done, _ in enumerate(pool.map(create, bodies), start=1):
                if done % 1000 == 0:
                    progress(f"    {done:,}/{runs:,} runs in {time.monotonic() - began:.0f} s")
    return Dataset(
        runs=runs,
        rows={"task runs": runs},
        seconds=time.monotonic() - began,
        # Runs made now have their expected start now: the history's window takes them in.
        window_end=datetime.now(UTC) + timedelta(minutes=1),
        flow_run_ids=tuple(flow_run_ids),
    )

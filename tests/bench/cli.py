"""`python -m tests.bench`: start each server, run the cells, print the report, write JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError

from tests.bench import report
from tests.bench.queries import QUERY_CELLS
from tests.bench.querybench import (
    FULL_RUNS,
    PREFECT_QUICK_RUNS,
    PREFECT_RUNS,
    QUICK_RUNS,
    QueryRun,
    measure_queries,
    table_size,
)
from tests.bench.runner import FULL_PLAN, OPERATIONS, QUICK_PLAN, Plan, ServerRun, measure
from tests.bench.servers import (
    OURS,
    PREFECT,
    Server,
    postgres_skip_reason,
    serve_ours,
    serve_prefect,
)
from tests.bench.wrk import MAX_THREADS, WrkError, wrk_executable, wrk_version

REPOSITORY = Path(__file__).resolve().parents[2]
DATABASES = ("sqlite", "postgresql")
EXAMPLE_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Above this 1-minute load average per CPU, something else is running on the machine.
BUSY_LOAD_PER_CPU = 0.5


def say(text: str, *, end: str = "\n") -> None:
    """Print at once: a full run takes minutes, progress must show as it happens."""
    print(text, end=end, flush=True)  # noqa: T201


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; QUICK=1 in the environment is the same as --quick."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=_truthy(os.environ.get("QUICK")),
        help=f"{QUICK_PLAN.seconds} s per cell, {QUICK_PLAN.repetitions}"
        f" repetition, concurrency {QUICK_PLAN.concurrencies} (env QUICK=1)",
    )
    parser.add_argument(
        "--prefect",
        action="store_true",
        help="measure Prefect's server too and print both side by side",
    )
    parser.add_argument("--databases", nargs="+", choices=DATABASES, default=list(DATABASES))
    queries = parser.add_mutually_exclusive_group()
    queries.add_argument(
        "--queries-only", action="store_true", help="only the query cells on a loaded table"
    )
    queries.add_argument("--no-queries", action="store_true", help="skip the query cells")
    parser.add_argument(
        "--query-runs",
        type=int,
        help=f"runs in the query cells' table (default: ours {FULL_RUNS['sqlite']:,} on"
        f" SQLite, {FULL_RUNS['postgresql']:,} on PostgreSQL, quick {QUICK_RUNS:,};"
        f" Prefect {PREFECT_RUNS:,}, quick {PREFECT_QUICK_RUNS:,})",
    )
    parser.add_argument("--operations", nargs="+", choices=OPERATIONS)
    parser.add_argument("--seconds", type=int, help="per cell (default 10, quick 3)")
    parser.add_argument("--repetitions", type=int, help="per cell (default 3, quick 1)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="wrk connections (default 1 16 64, quick 16)"
    )
    parser.add_argument("--workers", type=int, default=2, help="taskrun-api worker processes")
    parser.add_argument("--prefect-venv", type=Path, default=REPOSITORY / ".venv-prefect-server")
    parser.add_argument("--output-dir", type=Path, default=REPOSITORY / "bench-results")
    parser.add_argument("--label", help="names the JSON file (default: ours[-vs-prefect][-quick])")
    return parser.parse_args(argv)


def plan_from(arguments: argparse.Namespace) -> Plan:
    """The quick or full plan, with whatever the command line overrides."""
    plan = QUICK_PLAN if arguments.quick else FULL_PLAN
    overrides: dict[str, Any] = {}
    if arguments.seconds is not None:
        overrides["seconds"] = arguments.seconds
    if arguments.repetitions is not None:
        overrides["repetitions"] = arguments.repetitions
    if arguments.concurrency is not None:
        overrides["concurrencies"] = tuple(arguments.concurrency)
    if arguments.operations is not None:
        overrides["operations"] = tuple(op for op in OPERATIONS if op in arguments.operations)
    return dataclasses.replace(plan, **overrides)


def git(*arguments: str) -> str:
    """A read-only git command's output in the repository ("" when git fails)."""
    completed = subprocess.run(
        ["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() if completed.returncode == 0 else ""


def context() -> dict[str, Any]:
    """Where and with what the bench ran."""
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "wrk_version": wrk_version(),
        "wrk_max_threads": MAX_THREADS,
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def busy_warning(facts: dict[str, Any]) -> str | None:
    """A warning when other processes already keep the machine's CPUs busy."""
    load, cpus = facts["load_average"][0], facts["cpus"] or 1
    if load <= BUSY_LOAD_PER_CPU * cpus:
        return None
    return (
        f"warning: the machine is busy before the bench starts (1-min load average {load:.2f}"
        f" on {cpus} CPUs): other processes take CPU from the server and wrk, so the numbers"
        " will be low and noisy (see the other CPU s column)"
    )


@contextmanager
def started(
    system: str, database: str, directory: Path, arguments: argparse.Namespace
) -> Iterator[Server]:
    """The server of `system` on a fresh `database`, answering."""
    if system == OURS:
        with serve_ours(database, directory, workers=arguments.workers) as server:
            yield server
    else:
        with serve_prefect(database, directory, prefect_venv=arguments.prefect_venv) as server:
            yield server


def run_server(
    system: str, database: str, directory: Path, plan: Plan, arguments: argparse.Namespace
) -> ServerRun:
    """Start one server, run every cell against it, stop it; failures become the run's error."""
    directory.mkdir(parents=True)
    say(f"== {report.SYSTEM_NAMES[system]} on {report.DATABASE_NAMES[database]}: starting")
    began = time.monotonic()
    run = ServerRun(system=system, database=database)
    try:
        with started(system, database, directory, arguments) as server:
            say(f"  $ {' '.join(server.command)}")
            say(
                f"  answering after {time.monotonic() - began:.1f} s; worker processes"
                f" {server.worker_pids()}"
            )
            measure(server, plan, directory, say, run)
    except (RuntimeError, OSError, httpx.HTTPError, SQLAlchemyError) as error:
        say(f"  FAILED: {report.SYSTEM_NAMES[system]} on {database}: {error}")
        run.error = str(error)
    return run


def run_query_server(
    system: str, database: str, directory: Path, plan: Plan, arguments: argparse.Namespace
) -> QueryRun | None:
    """Load a table, start one server on it, run the query cells; None when it failed."""
    runs = table_size(system, database, quick=plan.quick, override=arguments.query_runs)
    say(f"== {report.SYSTEM_NAMES[system]} on {report.DATABASE_NAMES[database]}: query cells")
    try:
        return measure_queries(
            system,
            database,
            directory,
            plan,
            runs=runs,
            workers=arguments.workers,
            prefect_venv=arguments.prefect_venv,
            progress=say,
        )
    except (RuntimeError, OSError, ValueError, httpx.HTTPError, SQLAlchemyError) as error:
        say(f"  FAILED: query cells of {report.SYSTEM_NAMES[system]} on {database}: {error}")
        return None


def print_query_report(queries: list[QueryRun]) -> list[report.TargetCheck]:
    """Each server's query cells and (ours) their plans, side by side; returns the checks."""
    checks: list[report.TargetCheck] = []
    for query in queries:
        say("\n" + report.query_table(query))
        if query.plans:
            say("\n" + report.query_plans(query))
    for database in DATABASES:
        ours = [q for q in queries if (q.run.system, q.run.database) == (OURS, database)]
        theirs = [q for q in queries if (q.run.system, q.run.database) == (PREFECT, database)]
        if ours and theirs:
            say(
                f"\nQuery cells ({ours[0].runs:,} runs ours, {theirs[0].runs:,} Prefect's)\n"
                + report.side_by_side(ours[0].run, theirs[0].run)
            )
        if ours:
            checks.extend(report.query_targets(ours[0]))
    return checks


def print_report(runs: list[ServerRun]) -> list[report.TargetCheck]:
    """Every server's table, the side-by-side tables, the targets; returns the checks."""
    checks: list[report.TargetCheck] = []
    for run in runs:
        if run.measured_cells or run.background is not None:
            say("\n" + report.server_table(run))
        if run.error is not None:
            say(
                f"\n{report.SYSTEM_NAMES[run.system]} on {report.DATABASE_NAMES[run.database]}:"
                f" FAILED after {len(run.measured_cells)} measured cell(s): {run.error}"
            )
    for database in DATABASES:
        ours = _find(runs, OURS, database)
        prefect = _find(runs, PREFECT, database)
        if ours is not None and prefect is not None:
            say("\n" + report.side_by_side(ours, prefect))
        if ours is not None:
            checks.extend(report.check_targets(ours, prefect))
    if checks:
        say("\n" + report.targets_section(checks))
    return checks


def _find(runs: list[ServerRun], system: str, database: str) -> ServerRun | None:
    """The run of `system` on `database`, if it completed."""
    for run in runs:
        if (run.system, run.database) == (system, database) and run.error is None:
            return run
    return None


def write_results(path: Path, document: dict[str, Any]) -> None:
    """The whole run as JSON (bench-results/ is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def databases_to_measure(asked: list[str]) -> tuple[list[str], dict[str, str]]:
    """The databases to measure, in order, and why any asked for is skipped."""
    databases = [database for database in DATABASES if database in asked]
    skipped: dict[str, str] = {}
    reason = postgres_skip_reason()
    if "postgresql" in databases and reason is not None:
        databases.remove("postgresql")
        skipped["postgresql"] = reason
        say(f"bench: PostgreSQL skipped: {reason} (e.g. {EXAMPLE_POSTGRES_URL})")
    return databases, skipped


def result_label(arguments: argparse.Namespace, plan: Plan) -> str:
    """--label, or what was run: ours or ours-vs-prefect, -quick in quick mode."""
    if arguments.label:
        return str(arguments.label)
    return ("ours-vs-prefect" if arguments.prefect else "ours") + ("-quick" if plan.quick else "")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every server was measured, 1 when one failed, 2 when none could."""
    arguments = parse_arguments(argv)
    plan = plan_from(arguments)
    try:
        wrk_executable()
    except WrkError as error:
        say(f"bench: {error}")
        return 2
    databases, skipped = databases_to_measure(arguments.databases)
    systems = [OURS, PREFECT] if arguments.prefect else [OURS]
    facts = context()
    say(report.header(plan, facts))
    if (warning := busy_warning(facts)) is not None:
        say(warning)
    servers = len(databases) * len(systems)
    if not arguments.queries_only:
        say(
            f"\n{servers} server(s), {plan.cells_per_server()} wrk runs each: about"
            f" {servers * plan.load_seconds_per_server()} s of load plus start-ups"
        )
    if not arguments.no_queries:
        query_seconds = len(QUERY_CELLS) * plan.repetitions * plan.seconds
        then = "" if arguments.queries_only else "then "
        say(
            f"\n{then}{servers} server(s) on a loaded table, {len(QUERY_CELLS)} query cells"
            f" x {plan.repetitions} repetition(s) each: about {servers * query_seconds} s of"
            " load plus loading the tables"
        )
    say("")

    began = datetime.now(UTC)
    clock = time.monotonic()
    runs: list[ServerRun] = []
    queries: list[QueryRun] = []
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as temporary:
        for database in databases if not arguments.queries_only else []:
            for system in systems:
                directory = Path(temporary) / f"{system}-{database}"
                runs.append(run_server(system, database, directory, plan, arguments))
        for database in databases if not arguments.no_queries else []:
            for system in systems:
                directory = Path(temporary) / f"queries-{system}-{database}"
                query = run_query_server(system, database, directory, plan, arguments)
                if query is not None:
                    queries.append(query)
    checks = print_report(runs)
    query_checks = print_query_report(queries)
    if query_checks:
        say("\n" + report.targets_section(query_checks))
    checks += query_checks
    elapsed = time.monotonic() - clock

    label = result_label(arguments, plan)
    path = Path(arguments.output_dir) / f"{began.strftime('%Y%m%dT%H%M%SZ')}-{label}.json"
    write_results(
        path,
        {
            "label": label,
            "started_at": began.isoformat(),
            "elapsed_seconds": round(elapsed, 1),
            "context": facts,
            "plan": plan.as_json(),
            "skipped": skipped,
            "servers": [run.as_json() for run in runs],
            "queries": [query.as_json() for query in queries],
            "targets": [check.as_json() for check in checks],
        },
    )
    shown = path.relative_to(REPOSITORY) if path.is_relative_to(REPOSITORY) else path
    say(f"\nresults: {shown}\nbench took {elapsed:.0f} s")
    expected_queries = 0 if arguments.no_queries else len(databases) * len(systems)
    failed = sum(1 for run in runs if run.error is not None) + expected_queries - len(queries)
    if failed and failed == len(runs) + expected_queries:
        return 2
    return 1 if failed else 0

"""The cells of a bench: each operation at each concurrency, repeated, against one server."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.bench.background import BackgroundRun, run_background, tasks_for
from tests.bench.background import describe as describe_background
from tests.bench.pools import CYCLE_POOL_RUNS, start_pool_size, write_run_pool
from tests.bench.procstat import (
    ProcessUsage,
    machine_cpu_seconds,
    measured,
    wait_until_idle,
    waited_children_cpu_seconds,
)
from tests.bench.servers import Server, post_setting_up
from tests.bench.wrk import WrkResult, run_wrk, threads_for, write_script

HEALTH = "health"
CREATE_NEW = "create_new"
CREATE_EXISTING = "create_existing"
READ = "read"
MIX = "mix"
SET_STATE_START = "set_state_start"
SET_STATE_CYCLE = "set_state_cycle"
BACKGROUND = "background"
# How long a run waits for the workers to finish what the run before left them.
SETTLE_TIMEOUT_SECONDS = 10.0
# The cells wrk drives; the background-task cell runs Prefect's own client instead.
WRK_OPERATIONS = (HEALTH, CREATE_NEW, CREATE_EXISTING, READ, MIX, SET_STATE_START, SET_STATE_CYCLE)
OPERATIONS = (*WRK_OPERATIONS, BACKGROUND)
DESCRIPTIONS = {
    HEALTH: "GET /api/health (the framework's ceiling)",
    CREATE_NEW: "POST /api/task_runs/, a new task_key every request",
    CREATE_EXISTING: "POST /api/task_runs/, the same body every request (exists already)",
    READ: "GET /api/task_runs/{id} of an existing run",
    MIX: "half create_new, half read",
    SET_STATE_START: "POST .../set_state RUNNING, each request a PENDING run of its own",
    SET_STATE_CYCLE: f"POST .../set_state, {CYCLE_POOL_RUNS} runs each alternating RUNNING"
    " and COMPLETED",
    BACKGROUND: "Task.delay() of N additions in one process, a task worker in another:"
    " results back per second",
}
# A worker with less than this share of a run's server CPU got too few connections.
IMBALANCE_SHARE = 0.25


@dataclass(frozen=True)
class Plan:
    """How long, how often and at which concurrencies every cell runs."""

    seconds: int
    repetitions: int
    concurrencies: tuple[int, ...]
    warmup_seconds: int
    operations: tuple[str, ...] = OPERATIONS
    quick: bool = False

    def cells_per_server(self) -> int:
        wrk_operations = [op for op in self.operations if op in WRK_OPERATIONS]
        return len(wrk_operations) * len(self.concurrencies) * self.repetitions

    def load_seconds_per_server(self) -> int:
        """Seconds of load each server gets, warm-up included."""
        return self.cells_per_server() * self.seconds + self.warmup_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds_per_cell": self.seconds,
            "repetitions": self.repetitions,
            "concurrencies": list(self.concurrencies),
            "warmup_seconds": self.warmup_seconds,
            "operations": list(self.operations),
            "quick": self.quick,
        }


FULL_PLAN = Plan(seconds=10, repetitions=3, concurrencies=(1, 16, 64), warmup_seconds=3)
QUICK_PLAN = Plan(seconds=3, repetitions=1, concurrencies=(16,), warmup_seconds=1, quick=True)


@dataclass(frozen=True)
class Repetition:
    """One wrk run of a cell and the CPU and memory used during it."""

    wrk: WrkResult
    workers: list[ProcessUsage]
    wrk_cpu_seconds: float
    # Everything the machine's CPUs ran during the run: workers, wrk, PostgreSQL, the rest.
    machine_cpu_seconds: float

    @property
    def other_cpu_seconds(self) -> float:
        """Machine CPU time that was neither the workers' nor wrk's."""
        workers = sum(usage.cpu_seconds or 0.0 for usage in self.workers)
        return max(0.0, self.machine_cpu_seconds - workers - self.wrk_cpu_seconds)

    def worker_cpu_shares(self) -> list[float] | None:
        """Each worker's share of the CPU all workers used; None if unknown or idle."""
        seconds = [usage.cpu_seconds for usage in self.workers]
        if len(seconds) < 2 or any(value is None for value in seconds):
            return None
        known = [value for value in seconds if value is not None]
        total = sum(known)
        return [value / total for value in known] if total > 0 else None

    @property
    def cpu_ms_per_request(self) -> float | None:
        """The workers' CPU time per request answered, in ms; None if unknown."""
        seconds = [usage.cpu_seconds for usage in self.workers]
        if not seconds or any(value is None for value in seconds) or not self.wrk.requests:
            return None
        return 1000 * sum(value for value in seconds if value is not None) / self.wrk.requests

    def as_json(self) -> dict[str, Any]:
        return {
            **self.wrk.as_json(),
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "workers": [usage.as_json() for usage in self.workers],
            "worker_cpu_shares": self.worker_cpu_shares(),
            "wrk_cpu_seconds": round(self.wrk_cpu_seconds, 2),
            "machine_cpu_seconds": round(self.machine_cpu_seconds, 2),
            "other_cpu_seconds": round(self.other_cpu_seconds, 2),
        }


@dataclass
class Cell:
    """One operation at one concurrency against one server, over its repetitions."""

    operation: str
    concurrency: int
    repetitions: list[Repetition] = field(default_factory=list)

    def _median(self, value: Callable[[Repetition], float]) -> float:
        return statistics.median(value(repetition) for repetition in self.repetitions)

    @property
    def requests_per_second(self) -> float:
        """The median over the repetitions."""
        return self._median(lambda repetition: repetition.wrk.requests_per_second)

    @property
    def p50_ms(self) -> float:
        """The median over the repetitions."""
        return self._median(lambda repetition: repetition.wrk.latency_ms["p50"])

    @property
    def p99_ms(self) -> float:
        """The median over the repetitions."""
        return self._median(lambda repetition: repetition.wrk.latency_ms["p99"])

    @property
    def successful_per_second(self) -> float:
        """2xx responses per second, the median over the repetitions."""
        return self._median(lambda repetition: repetition.wrk.successful_per_second)

    @property
    def non_2xx(self) -> int:
        """The total over the repetitions."""
        return sum(repetition.wrk.non_2xx for repetition in self.repetitions)

    @property
    def reused(self) -> int:
        """Requests that reused a prepared run, in total over the repetitions."""
        return sum(repetition.wrk.reused for repetition in self.repetitions)

    @property
    def socket_errors(self) -> int:
        """The total over the repetitions."""
        return sum(repetition.wrk.socket_error_count for repetition in self.repetitions)

    @property
    def statuses(self) -> dict[int, int]:
        """Responses by status, totalled over the repetitions."""
        totals: dict[int, int] = {}
        for repetition in self.repetitions:
            for status, count in repetition.wrk.statuses.items():
                totals[status] = totals.get(status, 0) + count
        return dict(sorted(totals.items()))

    @property
    def wrk_cpu_seconds(self) -> float:
        """The median over the repetitions."""
        return self._median(lambda repetition: repetition.wrk_cpu_seconds)

    @property
    def other_cpu_seconds(self) -> float:
        """The median over the repetitions."""
        return self._median(lambda repetition: repetition.other_cpu_seconds)

    @property
    def cpu_ms_per_request(self) -> float | None:
        """The workers' CPU ms per request, the median over the repetitions that know it."""
        known = [
            value
            for repetition in self.repetitions
            if (value := repetition.cpu_ms_per_request) is not None
        ]
        return statistics.median(known) if known else None

    def worker_cpu_seconds(self) -> list[float | None]:
        """Each worker's CPU seconds (median over the repetitions), in worker order."""
        columns = _per_worker(self.repetitions, lambda usage: usage.cpu_seconds)
        return [
            statistics.median(known) if (known := [v for v in column if v is not None]) else None
            for column in columns
        ]

    def worker_peak_rss_mb(self) -> list[float]:
        """Each worker's highest sampled RSS over the repetitions, in MB, in worker order."""
        columns = _per_worker(self.repetitions, lambda usage: usage.peak_rss_bytes)
        return [max(v for v in column if v is not None) / 1e6 for column in columns]

    def lowest_cpu_share(self) -> float | None:
        """The smallest share of a run's CPU any worker got, over the repetitions."""
        shares = [
            min(found)
            for repetition in self.repetitions
            if (found := repetition.worker_cpu_shares()) is not None
        ]
        return min(shares) if shares else None

    def imbalanced(self) -> bool:
        """True when some worker got less than IMBALANCE_SHARE of a repetition's CPU.

        Only where there are at least as many connections as workers: one connection is
        always served by one worker.
        """
        workers = max((len(repetition.workers) for repetition in self.repetitions), default=0)
        lowest = self.lowest_cpu_share()
        return self.concurrency >= workers and lowest is not None and lowest < IMBALANCE_SHARE

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "concurrency": self.concurrency,
            "requests_per_second": round(self.requests_per_second, 1),
            "successful_per_second": round(self.successful_per_second, 1),
            "reused": self.reused,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "statuses": {str(status): count for status, count in self.statuses.items()},
            "worker_cpu_seconds": [
                None if value is None else round(value, 2) for value in self.worker_cpu_seconds()
            ],
            "worker_peak_rss_mb": [round(value, 1) for value in self.worker_peak_rss_mb()],
            "wrk_cpu_seconds": round(self.wrk_cpu_seconds, 2),
            "other_cpu_seconds": round(self.other_cpu_seconds, 2),
            "cpu_ms_per_request": self.cpu_ms_per_request,
            "lowest_worker_cpu_share": self.lowest_cpu_share(),
            "imbalanced": self.imbalanced(),
            "repetitions": [repetition.as_json() for repetition in self.repetitions],
        }


def _per_worker(
    repetitions: list[Repetition], value: Callable[[ProcessUsage], float | int | None]
) -> list[list[float | int | None]]:
    """Values per worker position (the n-th worker of every repetition), in worker order."""
    width = max((len(repetition.workers) for repetition in repetitions), default=0)
    return [
        [value(rep.workers[index]) for rep in repetitions if index < len(rep.workers)]
        for index in range(width)
    ]


@dataclass
class ServerRun:
    """Everything measured against one server on one database."""

    system: str
    database: str
    command: list[str] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)
    health_available: bool = False
    cells: list[Cell] = field(default_factory=list)
    background: BackgroundRun | None = None
    log_tail: str = ""
    log_tracebacks: int = 0
    error: str | None = None

    @property
    def measured_cells(self) -> list[Cell]:
        """The cells with at least one repetition, by concurrency."""
        cells = [cell for cell in self.cells if cell.repetitions]
        return sorted(cells, key=lambda cell: cell.concurrency)

    def cell(self, operation: str, concurrency: int) -> Cell | None:
        """The cell of `operation` at `concurrency`, if it was measured."""
        for cell in self.cells:
            if (cell.operation, cell.concurrency) == (operation, concurrency) and cell.repetitions:
                return cell
        return None

    def share_of_health(self, cell: Cell) -> float | None:
        """The cell's requests/s over health's at the same concurrency (None: no health)."""
        health = self.cell(HEALTH, cell.concurrency) if self.health_available else None
        if health is None or health.requests_per_second == 0:
            return None
        return cell.requests_per_second / health.requests_per_second

    def as_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "database": self.database,
            "command": self.command,
            "worker_pids": self.worker_pids,
            "health_available": self.health_available,
            "error": self.error,
            "cells": [
                {**cell.as_json(), "share_of_health": self.share_of_health(cell)}
                for cell in self.measured_cells
            ],
            "background": self.background.as_json() if self.background else None,
            "log_tracebacks": self.log_tracebacks,
            "log_tail": self.log_tail,
        }


# ---------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Fixtures:
    """What the scripts need from the server: a run to read, a body that already exists, the
    runs the set_state cycle goes round, and where to write the runs of each start cell.
    """

    read_id: str
    existing_body: str
    cycle_pool: Path
    directory: Path


def prepare_fixtures(server: Server, directory: Path) -> Fixtures:
    """Create the task run that `read`, `mix` and `create_existing` use, and the cycle's runs."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        body = {
            "task_key": f"bench-existing-{uuid.uuid4().hex[:8]}",
            "dynamic_key": "0",
            "flow_run_id": server.new_flow_run_id(client),
            "tags": ["bench"],
        }
        response = post_setting_up(client, "/api/task_runs/", body)
        if response.status_code != 201:
            raise RuntimeError(
                f"creating the bench's task run answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        read_id: str = response.json()["id"]
    cycle_pool = write_run_pool(server, CYCLE_POOL_RUNS, directory / "cycle-pool.txt")
    return Fixtures(
        read_id=read_id,
        existing_body=json.dumps(body),
        cycle_pool=cycle_pool,
        directory=directory,
    )


def health_available(server: Server) -> bool:
    """True when GET /api/health answers 200."""
    try:
        return httpx.get(f"{server.base_url}/api/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def script_arguments(
    operation: str, fixtures: Fixtures, *, concurrency: int, start_pool: Path | None = None
) -> list[str]:
    """The arguments of the operation's Lua script; new key prefixes for every wrk run."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    threads = str(threads_for(concurrency))
    return {
        HEALTH: [],
        READ: [fixtures.read_id],
        CREATE_NEW: [prefix],
        CREATE_EXISTING: [fixtures.existing_body],
        MIX: [fixtures.read_id, prefix],
        SET_STATE_START: [str(start_pool), threads],
        SET_STATE_CYCLE: [str(fixtures.cycle_pool), threads],
    }[operation]


class Progress(Protocol):
    """Prints a progress line at once; `end=""` leaves the line open for its result."""

    def __call__(self, text: str, *, end: str = "\n") -> None: ...


def measure(
    server: Server, plan: Plan, directory: Path, progress: Progress, run: ServerRun
) -> None:
    """Run every cell of `plan` against `server`, repetition by repetition, into `run`.

    `run` keeps what was measured when a later cell fails.
    """
    scripts = {operation: write_script(operation, directory) for operation in WRK_OPERATIONS}
    fixtures = prepare_fixtures(server, directory)
    run.command = server.command
    run.worker_pids = server.worker_pids()
    run.health_available = health_available(server)
    if not run.health_available:
        progress(
            f"  note: {server.system} does not answer GET /api/health with 200: the ceiling"
            " is unavailable and the ratios to it are skipped"
        )
    operations = [
        op
        for op in plan.operations
        if op in WRK_OPERATIONS and (op != HEALTH or run.health_available)
    ]
    run.cells = [Cell(op, concurrency) for concurrency in plan.concurrencies for op in operations]
    if run.cells:
        warm_up(server, scripts[MIX], fixtures, plan, progress)
    total = len(run.cells) * plan.repetitions
    for repetition in range(plan.repetitions):
        for index, cell in enumerate(run.cells):
            number = repetition * len(run.cells) + index + 1
            label = (
                f"  [{number}/{total}] {server.system} {server.database} {cell.operation}"
                f" c={cell.concurrency} rep {repetition + 1}/{plan.repetitions}"
            )
            start_pool = None
            if cell.operation == SET_STATE_START:
                start_pool = prepare_start_pool(server, fixtures, plan, label, progress)
            progress(f"{label}: ", end="")
            result = run_cell(
                server, scripts[cell.operation], cell, fixtures, plan, start_pool=start_pool
            )
            cell.repetitions.append(result)
            progress(describe(result))
    if BACKGROUND in plan.operations:
        tasks = tasks_for(server.system, quick=plan.quick)
        progress(f"  {server.system} {server.database} background: {tasks} tasks: ", end="")
        run.background = run_background(server, tasks, directory / "background")
        progress(describe_background(run.background))
    run.log_tail = server.log_tail()
    run.log_tracebacks = server.log_text().count("Traceback (most recent call last)")


def warm_up(
    server: Server, script: Path, fixtures: Fixtures, plan: Plan, progress: Progress
) -> None:
    """Creates and reads at the highest concurrency, so every worker and pool is warm."""
    concurrency = max(plan.concurrencies)
    progress(
        f"  warming up {server.system} {server.database}: mix at c={concurrency}"
        f" for {plan.warmup_seconds} s"
    )
    run_wrk(
        server.base_url,
        script,
        concurrency=concurrency,
        seconds=plan.warmup_seconds,
        arguments=script_arguments(MIX, fixtures, concurrency=concurrency),
    )


def prepare_start_pool(
    server: Server, fixtures: Fixtures, plan: Plan, label: str, progress: Progress
) -> Path:
    """New PENDING runs for one set_state_start cell, made before it is measured."""
    count = start_pool_size(server.system, plan.seconds)
    began = time.monotonic()
    path = write_run_pool(server, count, fixtures.directory / f"start-pool-{uuid.uuid4().hex}.txt")
    progress(f"{label}: {count} PENDING runs made in {time.monotonic() - began:.1f} s (not timed)")
    return path


def run_cell(
    server: Server,
    script: Path,
    cell: Cell,
    fixtures: Fixtures,
    plan: Plan,
    *,
    start_pool: Path | None = None,
) -> Repetition:
    """One wrk run of the cell, with the CPU time and RSS used measured around it."""
    return measured_wrk_run(
        server,
        script,
        concurrency=cell.concurrency,
        seconds=plan.seconds,
        arguments=script_arguments(
            cell.operation, fixtures, concurrency=cell.concurrency, start_pool=start_pool
        ),
    )


def measured_wrk_run(
    server: Server, script: Path, *, concurrency: int, seconds: float, arguments: list[str]
) -> Repetition:
    """One wrk run of `script` against the server, with the CPU time and RSS used around it.

    It starts once the workers have finished what the run before left them, so that its
    connections are shared between the workers as they would be by a server at rest.
    """
    server.check_running()
    workers = server.worker_pids()
    wait_until_idle(workers, timeout=SETTLE_TIMEOUT_SECONDS)
    machine_before = machine_cpu_seconds()
    wrk_before = waited_children_cpu_seconds()
    with measured(workers) as usages:
        result = run_wrk(
            server.base_url,
            script,
            concurrency=concurrency,
            seconds=seconds,
            arguments=arguments,
        )
    return Repetition(
        wrk=result,
        workers=usages,
        wrk_cpu_seconds=waited_children_cpu_seconds() - wrk_before,
        machine_cpu_seconds=machine_cpu_seconds() - machine_before,
    )


def describe(repetition: Repetition) -> str:
    """A one-line summary of a repetition for the progress output."""
    wrk = repetition.wrk
    text = (
        f"{wrk.requests_per_second:8.1f} req/s  p50 {wrk.latency_ms['p50']:7.2f} ms"
        f"  p99 {wrk.latency_ms['p99']:8.2f} ms  non-2xx {wrk.non_2xx}"
    )
    if wrk.socket_error_count:
        text += f"  socket errors {wrk.socket_errors}"
    if wrk.reused:
        text += f"  ran out of prepared runs: {wrk.reused} reused"
    return text

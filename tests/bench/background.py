"""The background-task cell: N trivial tasks delayed by one process (`Task.delay()`, Prefect's
own client, one call after the other) and run by Prefect's task worker in another, the time
until every result is back; then one task at a time, delayed and waited for, to time the way
from `.delay()` to its result.

Where the time goes, per task: how long the delay side took to delay and to collect the
result, how much of that it waited for the server's HTTP answers, and the CPU time of the
delay side, of the task worker and of the server while it ran. The same for Prefect's server:
the delay side and the worker are the same processes, only the server differs.

The delay side delays from one thread. Prefect's client runs every `.delay()` and
`.result()` on one event-loop thread of its own whatever the caller's threads, so more
threads would only overlap the waits for the server, which are longer on Prefect's: tried
with four, they lifted neither figure past the machine's CPU bound (README, Background
tasks).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.procstat import cpu_seconds, measured
from tests.bench.servers import OURS, PREFECT, Server

REPOSITORY = Path(__file__).resolve().parents[2]
# Prefect's server manages a few tasks a second, ours many more: each gets enough to measure
# its rate, in about the same time.
TASKS = {OURS: 2000, PREFECT: 200}
QUICK_TASKS = {OURS: 100, PREFECT: 30}
TASK_WORKERS = 1
# A worker needs a few seconds to import Prefect and subscribe.
WORKER_START_SECONDS = 5
WITHIN_SECONDS = 1800
ROUND_TRIPS = 10


@dataclass
class BackgroundRun:
    """One background-task cell against one server."""

    tasks: int
    completed: int = 0
    delay_seconds: float = 0.0
    total_seconds: float = 0.0
    delay_cpu_seconds: float = 0.0
    worker_cpu_seconds: list[float | None] = field(default_factory=list)
    server_cpu_seconds: list[float | None] = field(default_factory=list)
    # Seconds the delay side waited for the server's HTTP answers, by kind of request.
    service_wait_seconds: dict[str, float] = field(default_factory=dict)
    # One task delayed and waited for at a time: milliseconds from `.delay()` to the result.
    round_trip_ms: list[float] = field(default_factory=list)
    # Why the one-at-a-time part failed; the throughput above stands without it.
    round_trip_error: str | None = None
    error: str | None = None

    @property
    def lost(self) -> int:
        return self.tasks - self.completed

    @property
    def tasks_per_second(self) -> float:
        return self.completed / self.total_seconds if self.total_seconds else 0.0

    @property
    def results_seconds(self) -> float:
        """How long collecting the results took, after the last `.delay()`."""
        return self.total_seconds - self.delay_seconds

    def per_task_ms(self, seconds: float | None) -> float | None:
        """`seconds` spread over the tasks, in milliseconds."""
        return None if seconds is None or not self.tasks else 1000 * seconds / self.tasks

    @property
    def cpu_ms_per_task(self) -> dict[str, float | None]:
        """CPU milliseconds per task of the delay side, the task workers and the server."""
        return {
            "delay side": self.per_task_ms(self.delay_cpu_seconds),
            "task worker": self.per_task_ms(_total(self.worker_cpu_seconds)),
            "server": self.per_task_ms(_total(self.server_cpu_seconds)),
        }

    @property
    def round_trip_median_ms(self) -> float | None:
        return statistics.median(self.round_trip_ms) if self.round_trip_ms else None

    def as_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "completed": self.completed,
            "lost": self.lost,
            "tasks_per_second": round(self.tasks_per_second, 2),
            "delay_seconds": self.delay_seconds,
            "total_seconds": self.total_seconds,
            "delay_cpu_seconds": self.delay_cpu_seconds,
            "worker_cpu_seconds": self.worker_cpu_seconds,
            "server_cpu_seconds": self.server_cpu_seconds,
            "service_wait_seconds": self.service_wait_seconds,
            "cpu_ms_per_task": self.cpu_ms_per_task,
            "round_trip_ms": self.round_trip_ms,
            "round_trip_error": self.round_trip_error,
            "error": self.error,
        }


def _total(values: list[float | None]) -> float | None:
    return None if not values or None in values else sum(v for v in values if v is not None)


def tasks_for(system: str, *, quick: bool) -> int:
    return (QUICK_TASKS if quick else TASKS)[system]


def prefect_environment(server: Server, directory: Path, home: str) -> dict[str, str]:
    """Prefect's client settings: the server under test, a home of its own, shared storage."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {
        **inherited,
        "PREFECT_API_URL": f"{server.base_url}/api",
        "PREFECT_HOME": str(directory / home),
        "PREFECT_LOCAL_STORAGE_PATH": str(directory / "storage"),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def run_background(server: Server, tasks: int, directory: Path) -> BackgroundRun:
    """Start the task workers, delay `tasks` additions, wait for every result."""
    directory.mkdir(parents=True, exist_ok=True)
    run = BackgroundRun(tasks=tasks)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.compat.background.worker"],
            cwd=REPOSITORY,
            env=prefect_environment(server, directory, f"worker-{number}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for number in range(TASK_WORKERS)
    ]
    try:
        time.sleep(WORKER_START_SECONDS)
        workers_before = [cpu_seconds(worker.pid) for worker in workers]
        with measured(server.worker_pids()) as usages:
            output = _delay_side(server, directory, "timed", tasks)
            workers_after = [cpu_seconds(worker.pid) for worker in workers]
        run.worker_cpu_seconds = [
            None if before is None or after is None else after - before
            for before, after in zip(workers_before, workers_after, strict=True)
        ]
        run.server_cpu_seconds = [usage.cpu_seconds for usage in usages]
        run.completed = output["completed"]
        run.delay_seconds = output["delay_seconds"]
        run.total_seconds = output["total_seconds"]
        run.delay_cpu_seconds = output["cpu_seconds"]
        run.service_wait_seconds = output["service_wait_seconds"]
    except _FAILURES as error:
        run.error = str(error)
    else:
        _time_round_trips(run, server, directory)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    return run


_FAILURES = (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired)


def _time_round_trips(run: BackgroundRun, server: Server, directory: Path) -> None:
    try:
        run.round_trip_ms = _delay_side(server, directory, "latency", ROUND_TRIPS)["round_trip_ms"]
    except _FAILURES as error:
        run.round_trip_error = str(error).strip().splitlines()[-1]


def _delay_side(server: Server, directory: Path, command: str, tasks: int) -> dict[str, Any]:
    """Run tests/compat/background/delay.py's `command` for `tasks` tasks; what it printed."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.compat.background.delay", command, str(tasks)],
        cwd=REPOSITORY,
        env=prefect_environment(server, directory, "delay"),
        capture_output=True,
        text=True,
        timeout=WITHIN_SECONDS + 120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the delay side failed: {completed.stderr[-2000:]}")
    output: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return output


def describe(run: BackgroundRun) -> str:
    """A one-line summary for the progress output."""
    if run.error is not None:
        return f"FAILED: {run.error}"
    return (
        f"{run.completed}/{run.tasks} results in {run.total_seconds:.1f} s"
        f" = {run.tasks_per_second:.1f} tasks/s (delaying took {run.delay_seconds:.1f} s);"
        f" one task alone: {run.round_trip_median_ms or 0:.0f} ms from .delay() to its result"
    )

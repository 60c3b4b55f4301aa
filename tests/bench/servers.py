"""The servers under load, each a real process on a fresh database of its own.

`serve_ours` starts the documented production command, `taskrun-api serve`; `serve_prefect`
starts Prefect's own server, `prefect server start`, from its virtualenv. Both yield a
`Server` that knows its base URL, its worker processes and how to make a flow run id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from app.db.database import Database
from app.services import task_runs
from app.settings import Settings
from generated import models
from tests.bench.procstat import children, command_line
from tests.support.databases import POSTGRES_ENV, empty_database, postgres_server_url
from tests.support.server import free_port

OURS = "taskrun-api"
PREFECT = "prefect"
START_TIMEOUT_SECONDS = {OURS: 90, PREFECT: 240}
STOP_TIMEOUT_SECONDS = 30
LOG_TAIL_LINES = 40
# uvicorn starts each worker process of `--workers N` (N > 1) through multiprocessing's spawn.
_SPAWNED_WORKER = "multiprocessing.spawn"


class ServerError(RuntimeError):
    """A server did not start, or stopped answering."""


@dataclass(frozen=True)
class Server:
    """A started server process and what the bench needs to know about it."""

    system: str
    database: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    # Makes a flow run id that the server accepts in a task run's `flow_run_id`.
    new_flow_run_id: Callable[[httpx.Client], str]
    # Makes this many new PENDING task runs and returns their ids (not measured).
    create_pending_runs: Callable[[int], list[str]]

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's spawned workers, or the server itself."""
        workers = [
            pid for pid in children(self.process.pid) if _SPAWNED_WORKER in command_line(pid)
        ]
        return workers or [self.process.pid]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server wrote to stdout and stderr."""
        return tail(self.log_path, lines)

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_running(self) -> None:
        """Raise ServerError, with the log's tail, when the server process has exited."""
        if self.process.poll() is not None:
            raise ServerError(
                f"{self.system} exited with {self.process.returncode}; its output ends with:\n"
                f"{self.log_tail()}"
            )


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ("" when it does not exist)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------
# Databases


def postgres_skip_reason() -> str | None:
    """Why PostgreSQL cannot be measured, or None when TEST_POSTGRES_URL is set."""
    if postgres_server_url() is None:
        return f"{POSTGRES_ENV} is not set"
    return None


@contextmanager
def prefect_database(database: str, directory: Path) -> Iterator[str]:
    """A fresh database for Prefect, with the async drivers its server needs."""
    if database == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'prefect.db'}"
        return
    with empty_database(database, directory) as url:
        yield (
            make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        )


# ---------------------------------------------------------------------------------------
# Processes


def our_settings_variables() -> set[str]:
    """The environment variables our service reads its settings from, upper-cased."""
    names: set[str] = set()
    for name, setting in Settings.model_fields.items():
        names.add(name.upper())
        alias = setting.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
    return names


def clean_environment(drop: Callable[[str], bool], settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without the variables `drop` names, plus `settings`."""
    inherited = {name: value for name, value in os.environ.items() if not drop(name.upper())}
    return {**inherited, **settings}


@contextmanager
def server_process(
    command: list[str], environment: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` in a session of its own; stop it afterwards.

    It gets exactly `environment`, and its stdout and stderr go to `log_path`.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, as an operator would; SIGKILL its process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"  server {process.pid} ignored SIGTERM; killing its group", flush=True)  # noqa: T201
    # The group is the one start_new_session made for this server: only its own processes.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_until_ready(server: Server, path: str, timeout: float) -> None:
    """Poll `path` until it answers 200; fail with the server's output if it exits or hangs."""
    deadline = time.monotonic() + timeout
    url = f"{server.base_url}{path}"
    while time.monotonic() < deadline:
        server.check_running()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise ServerError(
        f"{server.system} did not answer GET {path} with 200 within {timeout:.0f} s;"
        f" its output ends with:\n{server.log_tail()}"
    )


def wait_for_workers(server: Server, expected: int, timeout: float = 30) -> list[int]:
    """The worker pids, once `expected` of them are running."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.worker_pids()
        if len(workers) == expected or time.monotonic() > deadline:
            return workers
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# The two systems


def _any_flow_run_id(_client: httpx.Client) -> str:
    """Our service takes `flow_run_id` as an opaque reference: any UUID will do."""
    return str(uuid.uuid4())


# How long a request the bench needs before measuring is retried: Prefect's server on
# SQLite can answer 503 for seconds on end after a cell has loaded it.
SETUP_PATIENCE_SECONDS = 120.0


def post_setting_up(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST a request the bench needs before measuring, retrying 503s as Prefect's client does.

    Prefect's server on SQLite answers 503 "database is locked" now and then even to a
    single request, and closes the connection after it: a request sent on that connection
    at the same moment gets no answer at all, and is retried too. The retries wait longer
    each time, up to 2 s, for at most SETUP_PATIENCE_SECONDS in all.
    """
    deadline = time.monotonic() + SETUP_PATIENCE_SECONDS
    attempt = 1
    while True:
        try:
            response = client.post(path, json=body)
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
            delay = min(0.2 * attempt, 2.0)
        else:
            if response.status_code != 503 or time.monotonic() >= deadline:
                return response
            delay = float(response.headers.get("retry-after", 0)) or min(0.2 * attempt, 2.0)
        time.sleep(delay)
        attempt += 1


def _prefect_flow_run_id(client: httpx.Client) -> str:
    """Prefect checks the flow run exists: create a flow and a run of it."""
    flow = post_setting_up(client, "/api/flows/", {"name": f"bench-{uuid.uuid4().hex[:8]}"})
    flow.raise_for_status()
    flow_run = post_setting_up(client, "/api/flow_runs/", {"flow_id": flow.json()["id"]})
    flow_run.raise_for_status()
    flow_run_id: str = flow_run.json()["id"]
    return flow_run_id


def _inserting_runs(database_url: str) -> Callable[[int], list[str]]:
    """Our runs go straight into the database, through the service's own create, in one
    transaction: far faster than over HTTP, and the same rows.
    """

    def create(count: int) -> list[str]:
        prefix = f"bench-pool-{uuid.uuid4().hex[:10]}"
        database = Database(database_url)
        try:
            with database.transaction() as connection:
                return [
                    str(
                        task_runs.create_task_run(
                            connection=connection,
                            task_run=models.TaskRunCreate(
                                task_key=f"{prefix}-{number}", dynamic_key="0"
                            ),
                        ).task_run.id
                    )
                    for number in range(count)
                ]
        finally:
            database.dispose()

    return create


# Prefect's server answers concurrent creates on SQLite with 503 now and then: few at once.
PREFECT_CREATE_THREADS = 2


def _creating_runs_over_http(base_url: str) -> Callable[[int], list[str]]:
    """Prefect's runs are made through its API (its tables are its own)."""

    def create(count: int) -> list[str]:
        prefix = f"bench-pool-{uuid.uuid4().hex[:10]}"
        with (
            httpx.Client(base_url=base_url, timeout=60) as client,
            ThreadPoolExecutor(max_workers=PREFECT_CREATE_THREADS) as pool,
        ):

            def one(number: int) -> str:
                body = {"task_key": f"{prefix}-{number}", "dynamic_key": "0"}
                response = post_setting_up(client, "/api/task_runs/", body)
                response.raise_for_status()
                run_id: str = response.json()["id"]
                return run_id

            return list(pool.map(one, range(count)))

    return create


def our_command(port: int, workers: int) -> list[str]:
    """The production command of the README, from the virtualenv running the bench."""
    executable = Path(sys.executable).parent / "taskrun-api"
    return [
        str(executable), "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


@contextmanager
def serve_ours(
    database: str,
    directory: Path,
    *,
    workers: int,
    prepare: Callable[[str], None] | None = None,
) -> Iterator[Server]:
    """`taskrun-api serve` on a fresh database, answering; stopped afterwards.

    `prepare`, when given, gets the new database's URL before the server starts (the query
    bench migrates and loads it there).
    """
    port = free_port()
    command = our_command(port, workers)
    log_path = directory / f"{OURS}-{database}.log"
    ours = our_settings_variables()
    with empty_database(database, directory) as database_url:
        if prepare is not None:
            prepare(database_url)
        with server_process(
            command,
            # Every other setting at its production default, whatever this shell has set.
            clean_environment(
                ours.__contains__, {"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
            ),
            log_path,
        ) as process:
            server = Server(
                system=OURS,
                database=database,
                base_url=f"http://127.0.0.1:{port}",
                process=process,
                log_path=log_path,
                command=command,
                new_flow_run_id=_any_flow_run_id,
                create_pending_runs=_inserting_runs(database_url),
            )
            wait_until_ready(server, "/api/health", START_TIMEOUT_SECONDS[OURS])
            wait_for_workers(server, workers)
            yield server


def prefect_command(prefect_venv: Path, port: int) -> list[str]:
    """`prefect server start` from Prefect's own virtualenv."""
    return [
        str(prefect_venv / "bin" / "prefect"), "server", "start",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def prefect_environment(home: Path, database_url: str) -> dict[str, str]:
    """Prefect's settings: its own home, no analytics, no UI, migrate on start."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "true",
    }


@contextmanager
def serve_prefect(database: str, directory: Path, *, prefect_venv: Path) -> Iterator[Server]:
    """Prefect's server on a fresh database, answering; stopped afterwards."""
    executable = prefect_venv / "bin" / "prefect"
    if not executable.exists():
        raise ServerError(f"{executable} is missing: `make bench-prefect` installs it")
    port = free_port()
    command = prefect_command(prefect_venv, port)
    log_path = directory / f"{PREFECT}-{database}.log"
    with (
        prefect_database(database, directory) as database_url,
        server_process(
            command,
            # No PREFECT_* setting of this shell: Prefect's defaults but for these.
            clean_environment(
                lambda name: name.startswith("PREFECT_"),
                prefect_environment(directory / "prefect-home", database_url),
            ),
            log_path,
        ) as process,
    ):
        server = Server(
            system=PREFECT,
            database=database,
            base_url=f"http://127.0.0.1:{port}",
            process=process,
            log_path=log_path,
            command=command,
            new_flow_run_id=_prefect_flow_run_id,
            create_pending_runs=_creating_runs_over_http(f"http://127.0.0.1:{port}"),
        )
        wait_until_ready(server, "/api/health", START_TIMEOUT_SECONDS[PREFECT])
        yield server

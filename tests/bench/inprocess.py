"""The application's own cost per request, in this process: no network, no HTTP server.

    python -m tests.bench.inprocess                     # CPU ms per request, by operation
    python -m tests.bench.inprocess --instructions      # instructions per request (callgrind)

Requests go straight to the ASGI application (every middleware, Flask and the handler, on an
SQLite file), one at a time. CPU time depends on what else the machine runs; instruction
counts do not, which makes them the measure of small changes: the same code counts the same.

    python -m tests.bench.inprocess --postgresql postgresql://postgres@127.0.0.1:5432/test

runs them on a throw-away database on that PostgreSQL server instead, and (the server on
this machine) adds the CPU its processes spent per request. Callgrind counts this process
only: the database's own work, and the kernel's for each round trip, are not in the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import procstat

OPERATIONS = ("health", "read", "create", "set_state", "filter")
# The runs a `filter` request lists: a full page.
FILTER_PAGE = 200
# Under callgrind a filter takes as long as a hundred reads: fewer of them are counted.
MAX_COUNTED_REQUESTS = {"filter": 20}
Request = tuple[str, str, bytes]


class Driver:
    """Sends requests to an ASGI application on one event loop, as an HTTP server would."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        started = asyncio.Event()

        async def receive() -> dict[str, Any]:
            return await self._lifespan.get()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._lifespan_task = asyncio.ensure_future(self.app(scope, receive, send))
        await self._lifespan.put({"type": "lifespan.startup"})
        await started.wait()

    def close(self) -> None:
        """Shut the application down (its lifespan), and the loop."""

        async def stop() -> None:
            await self._lifespan.put({"type": "lifespan.shutdown"})
            await self._lifespan_task

        self.loop.run_until_complete(stop())
        self.loop.close()

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return self.loop.run_until_complete(self._request(method, path, body))

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        path, _, query = path.partition("?")
        headers = [(b"host", b"bench"), (b"x-prefect-api-version", b"0.8.4")]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4200), "state": {},
        }  # fmt: skip
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def requests_of(operation: str, driver: Driver, count: int) -> list[Request]:
    """`count` requests of `operation`, with what they need created beforehand."""

    def create_body(key: str, **fields: Any) -> bytes:
        return json.dumps({"task_key": key, "dynamic_key": "0", **fields}).encode()

    def new_run() -> dict[str, Any]:
        status, body = driver.request("POST", "/api/task_runs/", create_body(uuid.uuid4().hex))
        assert status == 201, body
        run: dict[str, Any] = json.loads(body)
        return run

    if operation == "health":
        return [("GET", "/api/health", b"")] * count
    if operation == "read":
        run = new_run()
        return [("GET", f"/api/task_runs/{run['id']}", b"")] * count
    if operation == "create":
        prefix = uuid.uuid4().hex
        return [
            ("POST", "/api/task_runs/", create_body(f"{prefix}-{n}", tags=["bench"]))
            for n in range(count)
        ]
    if operation == "set_state":
        running = b'{"state":{"type":"RUNNING"}}'
        return [
            ("POST", f"/api/task_runs/{new_run()['id']}/set_state", running) for _ in range(count)
        ]
    if operation == "filter":
        for _ in range(FILTER_PAGE):
            run = new_run()
            status, body = driver.request(
                "POST", f"/api/task_runs/{run['id']}/set_state", b'{"state":{"type":"RUNNING"}}'
            )
            assert status == 201, body
        return [("POST", "/api/task_runs/filter", b'{"limit":%d}' % FILTER_PAGE)] * count
    raise ValueError(operation)


@dataclass(frozen=True)
class Cost:
    """CPU ms per request: this process's, and the PostgreSQL server's (None on SQLite)."""

    process: float
    database: float | None = None


def measure(
    operations: list[str],
    count: int,
    *,
    timed: bool,
    send: bool = True,
    postgresql: str | None = None,
) -> dict[str, Cost]:
    """CPU per request of each operation (or, untimed, just send them; or, not sending,
    only make what the requests need), on an SQLite file or, given a PostgreSQL server's
    URL, a database of its own there.
    """
    from app.db.migrate import upgrade  # noqa: PLC0415 - after the environment is set
    from app.main import create_app  # noqa: PLC0415
    from app.settings import Settings  # noqa: PLC0415

    with _bench_database(postgresql) as url:
        upgrade(url)
        driver = Driver(create_app(Settings(database_url=url)))
        results: dict[str, Cost] = {}
        try:
            for operation in operations:
                prepared = requests_of(operation, driver, count)
                send_all(driver, prepared[: max(1, count // 10)] if timed else [])
                began = time.process_time()
                database_began = _postgresql_cpu_seconds() if postgresql else 0.0
                send_all(driver, prepared if send else [])
                per_request = 1000 / max(count, 1)
                results[operation] = Cost(
                    process=(time.process_time() - began) * per_request,
                    database=(
                        (_postgresql_cpu_seconds() - database_began) * per_request
                        if postgresql
                        else None
                    ),
                )
        finally:
            driver.close()
        return results


@contextmanager
def _bench_database(postgresql: str | None) -> Iterator[str]:
    """An SQLite file in a temporary directory, or a throw-away database on the server."""
    if postgresql:
        from tests.support.databases import postgres_database  # noqa: PLC0415

        with postgres_database(postgresql) as url:
            yield url
        return
    directory = Path(tempfile.mkdtemp(prefix="taskrun-inprocess-"))
    try:
        yield f"sqlite:///{directory / 'bench.db'}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _postgresql_cpu_seconds() -> float:
    """The CPU time of every PostgreSQL process on this machine, to the nanosecond where the
    kernel says (a short measurement's few milliseconds are lost in /proc/PID/stat's ticks).
    """
    return sum(_cpu_seconds_of(pid) for pid in procstat.processes_named("postgres"))


def _cpu_seconds_of(pid: int) -> float:
    precise = procstat.on_cpu_seconds(pid)
    return precise if precise is not None else procstat.cpu_seconds(pid) or 0.0


def send_all(driver: Driver, prepared: list[Request]) -> None:
    for method, path, body in prepared:
        status, answer = driver.request(method, path, body)
        assert 200 <= status < 300, (status, answer[:300])


def instructions(operation: str, count: int, *, postgresql: str | None = None) -> float:
    """Instructions per request of `operation`, counted by callgrind: a run that sends `count`
    requests less one that only makes what they need (the start-up, and the run each
    proposal changes), over `count`.
    """
    database = ["--postgresql", postgresql] if postgresql else []

    def run(requests: int, *, send: bool) -> int:
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "callgrind.out"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 sys.executable, "-m", "tests.bench.inprocess", "--operations", operation,
                 "--requests", str(requests), "--untimed", *([] if send else ["--unsent"]),
                 *database],
                capture_output=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
            summary = re.search(r"^summary: (\d+)", out.read_text(errors="replace"), re.M)
            assert summary is not None
            return int(summary.group(1))

    return (run(count, send=True) - run(count, send=False)) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.inprocess", description=__doc__)
    parser.add_argument("--operations", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument(
        "--postgresql",
        metavar="SERVER_URL",
        help="run on a throw-away database on this PostgreSQL server instead of SQLite",
    )
    parser.add_argument("--untimed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unsent", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    postgresql = arguments.postgresql
    if arguments.untimed:
        measure(
            arguments.operations,
            arguments.requests,
            timed=False,
            send=not arguments.unsent,
            postgresql=postgresql,
        )
        return 0
    report: Callable[[str], str]
    if arguments.instructions:
        if shutil.which("valgrind") is None:
            print("--instructions needs valgrind (Debian package valgrind)", file=sys.stderr)  # noqa: T201
            return 2
        counts = {
            op: instructions(
                op,
                min(arguments.requests, MAX_COUNTED_REQUESTS.get(op, 200)),
                postgresql=postgresql,
            )
            for op in arguments.operations
        }
        report = lambda op: f"{counts[op] / 1e6:8.3f} M instructions per request"  # noqa: E731
    else:
        costs = measure(arguments.operations, arguments.requests, timed=True, postgresql=postgresql)
        report = lambda op: _cpu_report(costs[op])  # noqa: E731
    for operation in arguments.operations:
        print(f"{operation:<10} {report(operation)}")  # noqa: T201
    return 0


def _cpu_report(cost: Cost) -> str:
    text = f"{cost.process:8.3f} ms of CPU per request"
    if cost.database is not None:
        text += f", and {cost.database:.3f} ms of the PostgreSQL server's"
    return text


if __name__ == "__main__":
    raise SystemExit(main())

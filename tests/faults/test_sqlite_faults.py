"""SQLite faults on a served database: answered 503 with Retry-After, recovered from alone.

Each test runs the service on a database of its own, brings about a real fault (a full file
system, files nobody may write, a lock held elsewhere), checks every answer during it, ends
it and checks that the service recovers without a restart and lost nothing it acknowledged.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.database import Database, DatabaseUnavailable, use_wal
from tests.support.faults import fill, flock_waiters, set_immutable, small_tmpfs, wait_for
from tests.support.server import RunningServer, running_server

# A task key that must never appear in the logs: they name errors, not the rows.
SECRET = "secret-row-content-7f3a"
LOCK_TIMEOUT = 1.0


def create(client: httpx.Client, *, data_bytes: int = 0) -> httpx.Response:
    body: dict[str, Any] = {"task_key": f"{SECRET}-{uuid.uuid4().hex}", "dynamic_key": "0"}
    if data_bytes:
        body["state"] = {"type": "COMPLETED", "data": "x" * data_bytes}
    return client.post("/task_runs/", json=body)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert "nothing was changed" in response.json()["detail"]


def assert_all_readable(client: httpx.Client, ids: list[str]) -> None:
    for run_id in ids:
        response = client.get(f"/task_runs/{run_id}")
        assert response.status_code == 200, (run_id, response.text)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


class TestDiskFull:
    @pytest.fixture
    def server(self, tmp_path: Path, log_path: Path) -> Iterator[RunningServer]:
        with (
            small_tmpfs(tmp_path / "disk", size="16m") as disk,
            running_server(f"sqlite:///{disk / 'taskrun.db'}", log_path=log_path) as running,
        ):
            yield running

    def test_creates_are_503_while_the_disk_is_full_and_succeed_after(
        self, server: RunningServer
    ) -> None:
        database_directory = Path(server.log_path.parent / "disk")  # type: ignore[union-attr]
        with httpx.Client(base_url=server.api_url, timeout=30) as client:
            acknowledged = [create(client).json()["id"] for _ in range(5)]
            filler = fill(database_directory)
            during = [create(client, data_bytes=200_000) for _ in range(20)]
            read_during = client.get(f"/task_runs/{acknowledged[0]}")
            filler.unlink()
            recovered = wait_for(lambda: create(client).status_code == 201, timeout=5)
            after = [create(client) for _ in range(5)]
            acknowledged += [r.json()["id"] for r in during + after if r.status_code == 201]
            assert_all_readable(client, acknowledged)

        refused = [response for response in during if response.status_code != 201]
        assert refused, "the full disk refused nothing"
        for response in refused:
            assert_unavailable(response)
        assert read_during.status_code == 200
        assert recovered
        assert [response.status_code for response in after] == [201] * 5
        log = server.log()
        assert "database unavailable (OperationalError SQLITE_FULL)" in log
        assert SECRET not in log
        assert "Traceback" not in log


class TestUnwritableFiles:
    def test_every_request_is_503_while_the_files_are_immutable_and_none_after(
        self, tmp_path: Path, log_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        with (
            running_server(f"sqlite:///{database}", log_path=log_path) as server,
            httpx.Client(base_url=server.api_url, timeout=30) as client,
        ):
            acknowledged = [create(client).json()["id"] for _ in range(5)]
            workers = server.worker_pids()
            with immutable_files(database):
                during = [create(client) for _ in range(10)]
                reads_during = [client.get(f"/task_runs/{run_id}") for run_id in acknowledged]
            recovered = wait_for(lambda: create(client).status_code == 201, timeout=5)
            after = [create(client) for _ in range(10)]
            assert_all_readable(client, acknowledged + [r.json()["id"] for r in after])
            workers_after = server.worker_pids()

        for response in during + reads_during:
            assert_unavailable(response)
        assert recovered
        assert [response.status_code for response in after] == [201] * 10
        assert workers_after == workers, f"a worker died:\n{server.log()}"
        assert "database unavailable (the database files cannot be written)" in server.log()
        assert SECRET not in server.log()


class TestLockedDatabase:
    def test_writes_wait_for_the_lock_timeout_then_503_while_reads_go_on(
        self, tmp_path: Path, log_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        environment = {"DATABASE_LOCK_TIMEOUT": str(LOCK_TIMEOUT)}
        with (
            running_server(
                f"sqlite:///{database}", environment=environment, log_path=log_path
            ) as server,
            httpx.Client(base_url=server.api_url, timeout=30) as client,
        ):
            acknowledged = [create(client).json()["id"] for _ in range(3)]
            holding, release = threading.Event(), threading.Event()
            holder = threading.Thread(target=hold_write_lock, args=(database, holding, release))
            holder.start()
            assert holding.wait(timeout=10)
            try:
                started = time.monotonic()
                during = create(client)
                waited = time.monotonic() - started
                read_during = client.get(f"/task_runs/{acknowledged[0]}")
            finally:
                release.set()
                holder.join()
            after = create(client)

        assert_unavailable(during)
        assert LOCK_TIMEOUT * 0.9 <= waited < LOCK_TIMEOUT + 2
        assert read_during.status_code == 200
        assert after.status_code == 201
        assert "database unavailable (OperationalError SQLITE_BUSY)" in server.log()


def hold_write_lock(database: Path, holding: threading.Event, release: threading.Event) -> None:
    """Hold SQLite's write lock from another connection until `release` is set."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(timeout=30)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


# A child process's entry point: database, prepared, told, done (events), outcomes (a queue).
ChildUse = Callable[[Path, Any, Any, Any, "multiprocessing.Queue[str]"], None]


@contextmanager
def immutable_files(database: Path) -> Iterator[None]:
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    set_immutable(files, immutable=True)
    try:
        yield
    finally:
        set_immutable(files, immutable=False)


class ChildDatabaseUser:
    """A child process that prepares `database`, then uses it when told (`go`) and says how
    that went; it ends once the block has ended, when the files are writable again (closing
    the last connection to a database writes to its shared memory too).
    """

    def __init__(self, target: ChildUse, database: Path) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._prepared, self._told, self._done = spawn.Event(), spawn.Event(), spawn.Event()
        self._outcomes: multiprocessing.Queue[str] = spawn.Queue()
        self._process = spawn.Process(
            target=target,
            args=(database, self._prepared, self._told, self._done, self._outcomes),
        )
        self.exitcode: int | None = None

    def __enter__(self) -> ChildDatabaseUser:
        self._process.start()
        assert self._prepared.wait(timeout=30), "the child did not prepare the database"
        return self

    def go(self) -> None:
        self._told.set()

    def outcome(self) -> str | None:
        """What the child said, or None if it ended without saying it (-7: a SIGBUS)."""
        wait_for(lambda: not self._outcomes.empty() or not self._process.is_alive(), timeout=30)
        return None if self._outcomes.empty() else self._outcomes.get()

    def __exit__(self, *_exception: object) -> None:
        self._done.set()
        self._process.join(timeout=30)
        self._process.kill()
        self._process.join()
        self.exitcode = self._process.exitcode


def prepare_stale_read_position(database: Path, *, pool_size: int = 10) -> Database:
    """A Database that has read `database` before another connection committed to it: its
    next transaction must note a new read position in SQLite's shared memory.
    """
    url = f"sqlite:///{database}"
    use_wal(url)
    user, other = Database(url, pool_size=pool_size), Database(url)
    with other.transaction() as connection:
        connection.execute(text("CREATE TABLE run (n INTEGER)"))
    with user.snapshot() as connection:
        connection.execute(text("SELECT count(*) FROM run"))
    with other.transaction() as connection:
        connection.execute(text("INSERT INTO run VALUES (1)"))
    other.dispose()
    return user


def outcome_of(work: Callable[[], None], *, done: str) -> str:
    """`done` once `work` has returned, or how the database refused it."""
    try:
        work()
    except DatabaseUnavailable as error:
        return f"unavailable: {error}"
    return done


def write_when_told(
    database: Path, prepared: Any, told: Any, done: Any, outcomes: multiprocessing.Queue[str]
) -> None:
    """(In a child process) write once told, waiting for the writer's turn."""
    user = prepare_stale_read_position(database)
    prepared.set()
    told.wait(timeout=30)

    def write() -> None:
        with user.transaction() as connection:
            connection.execute(text("INSERT INTO run VALUES (2)"))

    outcomes.put(outcome_of(write, done="committed"))
    done.wait(timeout=30)


def read_when_told(
    database: Path, prepared: Any, told: Any, done: Any, outcomes: multiprocessing.Queue[str]
) -> None:
    """(In a child process) read while the pool's one connection is taken, then let it go
    once told: the reader gets it after the files became unwritable.
    """
    user = prepare_stale_read_position(database, pool_size=1)
    taken = user.engine.connect()
    reader = threading.Thread(target=read, args=(user, outcomes))
    reader.start()
    # Time for the reader to look at the files and begin to wait for the connection.
    time.sleep(0.5)
    prepared.set()
    told.wait(timeout=30)
    taken.close()
    reader.join()
    done.wait(timeout=30)


def read(user: Database, outcomes: multiprocessing.Queue[str]) -> None:
    def select() -> None:
        with user.snapshot() as connection:
            connection.execute(text("SELECT count(*) FROM run"))

    outcomes.put(outcome_of(select, done="read"))


def connect_when_told(
    database: Path, prepared: Any, told: Any, done: Any, outcomes: multiprocessing.Queue[str]
) -> None:
    """(In a child process) open a second connection once told, as a transaction that finds
    the pool's one connection taken does after its look at the files.
    """
    user = prepare_stale_read_position(database)
    prepared.set()
    told.wait(timeout=30)

    def connect_twice() -> None:
        with user.engine.connect(), user.engine.connect():
            pass

    outcomes.put(outcome_of(connect_twice, done="connected"))
    done.wait(timeout=30)


class TestFilesBecomingUnwritableMidway:
    """SQLite writes to its -shm file through memory, readers too; once the file is immutable,
    that write is a SIGBUS, which ends the process. The service looks at the file before
    each transaction, and again where the transaction may wait. Here the files become
    immutable after the first look, in a child process that must survive and be refused.
    """

    REFUSED = "unavailable: the database files cannot be written"

    def test_while_a_writer_waits_for_its_turn(self, tmp_path: Path) -> None:
        database = tmp_path / "taskrun.db"
        lock_file = Path(f"{database}-write.lock")
        with (
            ChildDatabaseUser(write_when_told, database) as child,
            lock_file.open("rb") as other_writer,
        ):
            # Another process's writer has the turn for as long as this flock is held.
            fcntl.flock(other_writer, fcntl.LOCK_EX)
            child.go()
            assert wait_for(lambda: flock_waiters(lock_file) == 1, timeout=10)
            with immutable_files(database):
                fcntl.flock(other_writer, fcntl.LOCK_UN)
                outcome = child.outcome()

        assert (outcome, child.exitcode) == (self.REFUSED, 0)

    @pytest.mark.parametrize(
        "use",
        [
            pytest.param(read_when_told, id="while a reader waits for a free connection"),
            pytest.param(connect_when_told, id="while a transaction opens a new connection"),
        ],
    )
    def test_while_the_child_waits_or_connects(self, tmp_path: Path, use: ChildUse) -> None:
        database = tmp_path / "taskrun.db"
        with ChildDatabaseUser(use, database) as child, immutable_files(database):
            child.go()
            outcome = child.outcome()

        assert (outcome, child.exitcode) == (self.REFUSED, 0)

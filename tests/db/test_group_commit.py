"""Concurrent SQLite writes of a process are committed together, each isolated in its savepoint."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError

from app.db.database import Database, DatabaseUnavailable, after_commit
from app.db.group_commit import Batch, GroupCommit, NestedWrite
from app.db.migrate import upgrade
from app.db.tables import event as event_table
from app.db.tables import task_run
from tests.support.locks import hold_in_another_process
from tests.support.records import START, fresh_run

WRITERS = 8
WAIT_SECONDS = 10.0


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def count_commits(database: Database) -> list[int]:
    commits = [0]

    def counted(_connection: Any) -> None:
        commits[0] += 1

    event.listen(database.engine, "commit", counted)
    return commits


def insert_run(connection: Connection, run_id: str) -> str:
    record = dataclasses.replace(fresh_run(), id=uuid.UUID(run_id), task_key=run_id)
    connection.execute(task_run.insert().values(**dataclasses.asdict(record)))
    return run_id


def stored_ids(database: Database) -> set[str]:
    with database.snapshot() as connection:
        return {str(row.id) for row in connection.execute(task_run.select())}


class Writers:
    """Threads that each call `database.write` with their own work, keeping the outcomes."""

    def __init__(self) -> None:
        self.outcomes: dict[int, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self, number: int, write: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.outcomes[number] = write()
            except BaseException as error:  # the test looks at it
                self.outcomes[number] = error

        thread = threading.Thread(target=run)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=WAIT_SECONDS)


def blocked_first_writer(database: Database, writers: Writers) -> threading.Event:
    """A first write that holds its batch open until the returned event is set."""
    release = threading.Event()
    inside = threading.Event()

    def slow(connection: Connection) -> str:
        inside.set()
        release.wait(WAIT_SECONDS)
        return insert_run(connection, str(uuid.uuid4()))

    writers.start(0, lambda: database.write(slow))
    inside.wait(WAIT_SECONDS)
    return release


def write_run(database: Database, run_id: str) -> str:
    return database.write(functools.partial(insert_run, run_id=run_id))


def test_writes_that_wait_together_are_committed_once(database: Database) -> None:
    commits = count_commits(database)
    writers = Writers()
    release = blocked_first_writer(database, writers)
    ids = [str(uuid.uuid4()) for _ in range(WRITERS)]
    for number, run_id in enumerate(ids, start=1):
        writers.start(number, functools.partial(write_run, database, run_id))
    wait_until(lambda: database.queued_writes == WRITERS)

    release.set()
    writers.join()

    assert [writers.outcomes[number] for number in range(1, WRITERS + 1)] == ids
    assert commits == [2]
    assert set(ids) <= stored_ids(database)


def test_writes_queued_while_the_leader_waits_for_its_turn_join_its_batch(
    tmp_path: Path,
) -> None:
    """Another process holds the turn: the writers queued meanwhile go in with the leader."""
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url)
    commits = count_commits(database)
    holder = hold_in_another_process(Path(f"{tmp_path / 'taskrun.db'}-write.lock"), 1.0)
    writers = Writers()
    ids = [str(uuid.uuid4()) for _ in range(WRITERS)]
    try:
        writers.start(0, functools.partial(write_run, database, ids[0]))
        # The first leads, and waits for the lock with its unit still queued.
        wait_until(lambda: database.queued_writes == 1)
        for number, run_id in enumerate(ids[1:], start=1):
            writers.start(number, functools.partial(write_run, database, run_id))
        wait_until(lambda: database.queued_writes == WRITERS)
        holder.communicate()
        writers.join()
    finally:
        holder.kill()
        database.dispose()

    assert [writers.outcomes[number] for number in range(WRITERS)] == ids
    assert commits == [1]


def test_a_failing_write_does_not_fail_the_others_of_its_batch(database: Database) -> None:
    existing = database.write(lambda c: insert_run(c, str(uuid.uuid4())))
    commits = count_commits(database)
    writers = Writers()
    release = blocked_first_writer(database, writers)
    good = [str(uuid.uuid4()) for _ in range(3)]
    writers.start(1, lambda: database.write(lambda c: insert_run(c, good[0])))
    # The same id again: the primary key refuses it, in the middle of the batch.
    writers.start(2, lambda: database.write(lambda c: insert_run(c, existing)))
    writers.start(3, lambda: database.write(lambda c: insert_run(c, good[1])))
    writers.start(4, lambda: database.write(lambda c: [insert_run(c, good[2]), 1 / 0]))
    wait_until(lambda: database.queued_writes == 4)

    release.set()
    writers.join()

    assert writers.outcomes[1] == good[0]
    assert isinstance(writers.outcomes[2], IntegrityError)
    assert writers.outcomes[3] == good[1]
    # A unit that fails after its statements leaves nothing behind either.
    assert isinstance(writers.outcomes[4], ZeroDivisionError)
    assert commits == [2]
    stored = stored_ids(database)
    assert {good[0], good[1], existing} <= stored
    assert good[2] not in stored


def test_a_fault_of_the_database_fails_the_whole_batch(database: Database) -> None:
    writers = Writers()
    release = blocked_first_writer(database, writers)
    run_ids = [str(uuid.uuid4()) for _ in range(3)]

    def fill_the_disk(connection: Connection) -> None:
        # The file may not grow: the next page needed is SQLITE_FULL, a fault of the database.
        pages = connection.execute(text("PRAGMA page_count")).scalar_one()
        connection.execute(text(f"PRAGMA max_page_count = {pages}"))
        connection.execute(
            event_table.insert().values(
                id=uuid.uuid4(), occurred=START, event="x", resource_id="x", resource={},
                related=[], payload={"x": "x" * 200_000}, follows=None, received=START,
            )
        )  # fmt: skip

    writers.start(1, lambda: database.write(lambda c: insert_run(c, run_ids[0])))
    writers.start(2, lambda: database.write(fill_the_disk))
    writers.start(3, lambda: database.write(lambda c: insert_run(c, run_ids[1])))
    wait_until(lambda: database.queued_writes == 3)

    release.set()
    writers.join()

    assert [type(writers.outcomes[number]) for number in (1, 2, 3)] == [DatabaseUnavailable] * 3
    database.dispose()  # a fresh connection, without the page limit
    assert not set(run_ids) & stored_ids(database)


def test_callbacks_run_after_the_commit_of_their_own_write_only(database: Database) -> None:
    called: list[str] = []
    writers = Writers()
    release = blocked_first_writer(database, writers)

    def write_and_note(name: str, *, fail: bool) -> Callable[[Connection], None]:
        def work(connection: Connection) -> None:
            insert_run(connection, str(uuid.uuid4()))
            after_commit(lambda: called.append(name))
            if fail:
                raise RuntimeError(name)

        return work

    writers.start(1, lambda: database.write(write_and_note("kept", fail=False)))
    writers.start(2, lambda: database.write(write_and_note("undone", fail=True)))
    wait_until(lambda: database.queued_writes == 2)
    assert called == []

    release.set()
    writers.join()

    assert called == ["kept"]
    assert isinstance(writers.outcomes[2], RuntimeError)


def test_the_work_sees_its_writers_context_wherever_it_runs(database: Database) -> None:
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request")
    writers = Writers()
    release = blocked_first_writer(database, writers)

    def as_request(name: str) -> str:
        request.set(name)
        return database.write(lambda _connection: f"{request.get()} {threading.get_ident()}")

    writers.start(1, lambda: as_request("first"))
    writers.start(2, lambda: as_request("second"))
    wait_until(lambda: database.queued_writes == 2)
    release.set()
    writers.join()

    first, first_thread = writers.outcomes[1].split()
    second, second_thread = writers.outcomes[2].split()
    assert (first, second) == ("first", "second")
    # Both ran in the leader's thread, at most one of them theirs.
    assert first_thread == second_thread


def test_a_write_inside_a_write_is_refused(database: Database) -> None:
    with pytest.raises(NestedWrite):
        database.write(lambda _connection: database.write(lambda _inner: None))


def test_a_leader_whose_batch_raises_hands_the_error_to_every_writer() -> None:
    def broken(batch: Batch) -> None:
        raise OSError("the disk went away")

    group = GroupCommit(broken)

    with pytest.raises(OSError, match="went away"):
        group.write(lambda: "never")
    # The next writer leads again.
    with pytest.raises(OSError, match="went away"):
        group.write(lambda: "never")


def test_a_failing_write_alone_in_its_batch_leaves_nothing(database: Database) -> None:
    run_id = str(uuid.uuid4())

    with pytest.raises(ZeroDivisionError):
        database.write(lambda c: [insert_run(c, run_id), 1 / 0])

    assert run_id not in stored_ids(database)
    assert database.write(lambda c: insert_run(c, run_id)) == run_id


def test_a_queued_writer_waits_no_longer_than_the_lock_timeout_in_all(tmp_path: Path) -> None:
    """Behind a leader that waits for a stalled lock, a writer's time in the queue counts."""
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    timeout = 1.0
    database = Database(url, lock_timeout=timeout)
    holder = hold_in_another_process(Path(f"{tmp_path / 'taskrun.db'}-write.lock"), 10)
    writers = Writers()
    waited: dict[int, float] = {}

    def timed_write(number: int) -> None:
        began = time.monotonic()
        try:
            database.write(functools.partial(insert_run, run_id=str(uuid.uuid4())))
        finally:
            waited[number] = time.monotonic() - began

    try:
        writers.start(1, functools.partial(timed_write, 1))
        time.sleep(timeout * 0.6)  # the first leads, waiting for the lock
        writers.start(2, functools.partial(timed_write, 2))
        writers.join()
    finally:
        holder.kill()
        holder.communicate()
        database.dispose()

    assert all(isinstance(outcome, DatabaseUnavailable) for outcome in writers.outcomes.values())
    # Without the deadline of the longest waiter, the second would wait 1.6 s.
    assert waited[2] < timeout + 0.3, waited

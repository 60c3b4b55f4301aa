"""SQLite writers take turns: inside a process, across processes, and after failures and faults."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from app.db.database import Database, DatabaseUnavailable
from app.db.migrate import upgrade
from app.db.writer_lock import WriterLock, WriterLockTimeout
from tests.support.locks import hold_in_another_process

HOLD_SECONDS = 0.5


def test_a_second_thread_waits_its_turn_and_gives_up_after_the_timeout(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "db-write.lock", timeout=0.2)
    lock.acquire()
    outcome: list[str] = []

    def second_writer() -> None:
        try:
            lock.acquire()
            outcome.append("acquired")
        except WriterLockTimeout:
            outcome.append("timed out")

    thread = threading.Thread(target=second_writer)
    thread.start()
    thread.join()
    lock.release()

    assert outcome == ["timed out"]
    lock.acquire()  # free again once released
    lock.release()
    lock.close()


def test_another_process_holding_the_lock_makes_a_writer_wait(tmp_path: Path) -> None:
    path = tmp_path / "db-write.lock"
    holder = hold_in_another_process(path, HOLD_SECONDS)
    lock = WriterLock(path, timeout=10)

    started = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    lock.close()
    holder.communicate()

    assert waited >= HOLD_SECONDS * 0.5


def test_a_failed_transaction_lets_the_next_writer_in(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url)

    def fail_half_way() -> None:
        with database.transaction() as connection:
            connection.execute(text("DELETE FROM task_run"))
            raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        fail_half_way()

    with database.transaction() as connection:
        connection.execute(text("DELETE FROM task_run"))
    assert (tmp_path / "taskrun.db-write.lock").exists()
    database.dispose()


def test_a_writer_that_never_gets_its_turn_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url, lock_timeout=0.1)
    turn_taken, may_finish = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with database.transaction() as connection:
            connection.execute(text("DELETE FROM task_run"))
            turn_taken.set()
            may_finish.wait(timeout=10)

    def impatient_writer() -> None:
        with database.transaction() as connection:
            connection.execute(text("DELETE FROM task_run"))

    slow = threading.Thread(target=slow_writer)
    slow.start()
    turn_taken.wait(timeout=10)
    failures: list[BaseException] = []
    impatient = threading.Thread(target=lambda: _record(impatient_writer, failures))
    impatient.start()
    impatient.join()
    may_finish.set()
    slow.join()
    database.dispose()

    assert [type(failure) for failure in failures] == [DatabaseUnavailable]


def _record(function: Callable[[], None], failures: list[BaseException]) -> None:
    try:
        function()
    except BaseException as failure:
        failures.append(failure)


def test_a_writer_gives_up_on_another_process_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "db-write.lock"
    holder = hold_in_another_process(path, 3)
    lock = WriterLock(path, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(WriterLockTimeout):
        lock.acquire()
    waited = time.monotonic() - started
    holder.kill()
    holder.communicate()

    assert 0.3 <= waited < 2
    lock.acquire()  # the wait left behind is taken over by the next writer
    lock.release()
    lock.close()


def test_a_lock_obtained_after_its_writer_gave_up_is_let_go(tmp_path: Path) -> None:
    path = tmp_path / "db-write.lock"
    holder = hold_in_another_process(path, 0.5)
    lock = WriterLock(path, timeout=0.1)
    with pytest.raises(WriterLockTimeout):
        lock.acquire()

    holder.communicate()  # the other process is done; the helper gets the lock, for nobody
    taken = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'ab')\n"
            "for _ in range(500):\n"
            "    try:\n"
            "        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); sys.exit(0)\n"
            "    except BlockingIOError:\n"
            "        time.sleep(0.01)\n"
            "sys.exit(1)",
            str(path),
        ],
        check=False,
        timeout=30,
    )
    lock.close()

    assert taken.returncode == 0, "the lock stayed held by a wait nobody wanted"


def test_a_file_fault_is_unavailable_and_leaves_the_writer_lock_free(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full", made by a page limit on the connections."""
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url, lock_timeout=1)

    def limit_pages(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA max_page_count=20")

    def write_past_the_limit() -> None:
        with database.transaction() as connection:
            for number in range(200):
                connection.execute(insert_one, {"key": f"k{number}", "pad": "x" * 2000})

    event.listen(database.engine, "connect", limit_pages)
    with pytest.raises(DatabaseUnavailable) as raised:
        write_past_the_limit()
    event.remove(database.engine, "connect", limit_pages)

    with database.transaction() as connection:  # new connections: the fault is over
        connection.execute(insert_one, {"key": "after", "pad": ""})
    database.dispose()

    assert raised.value.reason == "OperationalError SQLITE_FULL"


def test_a_bad_statement_is_not_mistaken_for_a_fault(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'taskrun.db'}"
    upgrade(url)
    database = Database(url)

    with pytest.raises(OperationalError), database.transaction() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))
    database.dispose()


def test_a_migrated_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "taskrun.db"

    upgrade(f"sqlite:///{path}")

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


insert_one = text(
    "INSERT INTO task_run (id, created, updated, name, task_key, dynamic_key, empirical_policy,"
    " tags, labels, task_inputs, run_count, flow_run_run_count, total_run_time)"
    " VALUES (lower(hex(randomblob(16))), '2020-01-01', '2020-01-01', :pad, :key, '0', '{}',"
    " '[]', '{}', '{}', 0, 0, 0)"
)

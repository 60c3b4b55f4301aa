"""SQLite writers take turns: inside a process, across processes, and after failures."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db.database import Database, DatabaseUnavailable
from app.db.migrate import upgrade
from app.db.writer_lock import WriterLock, WriterLockTimeout

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
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(float(sys.argv[2]))",
            str(path),
            str(HOLD_SECONDS),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
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

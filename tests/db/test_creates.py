"""A create's rows (the run, its first state, its searchable tags) go in whole or not at all;
on PostgreSQL by one statement, which a write of one statement commits by itself.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Connection, create_engine, select, text

from app.db import task_runs as run_rows
from app.db.database import Database, DatabaseUnavailable
from app.db.tables import task_run, task_run_tag
from app.services.task_runs import creates_in_one_statement
from generated import models
from tests.support.databases import created_run
from tests.support.records import fresh_run


def stored_tags(database: Database, run_id: UUID) -> list[str]:
    with database.snapshot() as connection:
        statement = select(task_run_tag.c.tag).where(task_run_tag.c.task_run_id == run_id)
        return sorted(connection.execute(statement).scalars())


def is_stored(database: Database, run_id: UUID) -> bool:
    with database.snapshot() as connection:
        statement = select(task_run.c.id).where(task_run.c.id == run_id)
        return connection.execute(statement).first() is not None


def test_a_created_run_has_a_row_for_each_tag_a_filter_can_name(database: Database) -> None:
    """Each distinct tag once; one holding U+0000 left out (no filter can name it)."""
    run = created_run(database, tags=["b", "a", "b", "c\x00d"])

    assert stored_tags(database, run.id) == ["a", "b"]
    assert run.tags == ["b", "a", "b", "c\x00d"]


def test_a_run_without_tags_has_no_tag_rows(database: Database) -> None:
    run = created_run(database, tags=[])

    assert is_stored(database, run.id)
    assert stored_tags(database, run.id) == []


def test_a_create_that_finds_the_key_taken_writes_none_of_its_rows(database: Database) -> None:
    first = created_run(database, task_key="same", tags=["kept"])
    again = created_run(database, task_key="same", tags=["not-written"], id=str(uuid4()))

    assert again.id == first.id
    assert stored_tags(database, first.id) == ["kept"]
    with database.snapshot() as connection:
        assert connection.execute(select(task_run.c.id)).scalars().all() == [first.id]


@pytest.mark.parametrize("one_statement", [True, False])
def test_only_a_write_of_one_statement_on_postgresql_commits_before_the_block_ends(
    database: Database, backend: str, one_statement: bool
) -> None:
    """On PostgreSQL such a write sends no BEGIN or COMMIT: another connection sees its
    statement's rows at once. Other writes, and every write on SQLite, are seen at commit.
    """
    run = fresh_run()
    seen_before_the_end: list[bool] = []

    def insert(connection: Connection) -> None:
        assert run_rows.insert_task_run_unless_conflicting(connection, run)
        seen_before_the_end.append(is_stored(database, run.id))

    database.write(insert, one_statement=one_statement)

    assert seen_before_the_end == [backend == "postgresql" and one_statement]
    assert is_stored(database, run.id)


def test_postgresql_connections_leave_autocommit_only_for_write_transactions(
    database: Database, backend: str
) -> None:
    """A connection a write transaction had is in autocommit again once back in the pool: the
    reads and one-statement writes after it change nothing on the connection they take.
    """
    if backend != "postgresql":
        pytest.skip("SQLite's connections have no autocommit mode here")

    def autocommit(connection: Connection) -> bool:
        return bool(connection.connection.driver_connection.autocommit)  # type: ignore[union-attr]

    with database.transaction() as connection:
        assert not autocommit(connection)
    with database.transaction(one_statement=True) as connection:
        assert autocommit(connection)
    # Every connection in the pool, the transaction's among them.
    pool_size = database.engine.pool.size()  # type: ignore[attr-defined]
    with ExitStack() as stack:
        reads = [stack.enter_context(database.snapshot()) for _ in range(pool_size)]
        assert [autocommit(connection) for connection in reads] == [True] * pool_size


def test_a_one_statement_write_given_up_is_cancelled_not_committed(
    database: Database, backend: str
) -> None:
    """As a worker does before it exits without its requests: the statement, waiting for a
    lock here, would otherwise commit by itself once the lock is released.
    """
    if backend != "postgresql":
        pytest.skip("SQLite writes are transactions: a process that ends commits none")
    run = fresh_run()

    def insert(connection: Connection) -> bool:
        return run_rows.insert_task_run_unless_conflicting(connection, run)

    engine = create_engine(database.url)
    try:
        with (
            engine.connect() as holder,
            engine.connect() as watcher,
            ThreadPoolExecutor(max_workers=1) as pool,
            holder.begin(),
        ):
            holder.execute(text("LOCK TABLE task_run IN EXCLUSIVE MODE"))
            write = pool.submit(database.write, insert, one_statement=True)
            wait_for_a_lock_wait(watcher)

            assert database.cancel_one_statement_writes() == 1
            with pytest.raises(DatabaseUnavailable) as cancelled:
                # Well before the lock timeout (10 s), which would end the wait too.
                write.result(timeout=5)
            assert "SQLSTATE 57014" in cancelled.value.reason  # query_canceled
    finally:
        engine.dispose()

    assert not is_stored(database, run.id)
    assert database.cancel_one_statement_writes() == 0


def wait_for_a_lock_wait(watcher: Connection) -> None:
    """Until a statement of this database waits for a lock."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    while True:
        # A new transaction each time: one sees a single snapshot of the activity.
        with watcher.begin():
            if watcher.execute(waiting).scalar_one() > 0:
                return
        assert time.monotonic() < deadline, "no statement waits for the lock"
        time.sleep(0.02)


def test_a_write_of_one_statement_that_fails_leaves_nothing(database: Database) -> None:
    run = created_run(database)
    taken_id = dataclasses.replace(fresh_run(), id=run.id, task_key="other")

    def insert_conflicting(connection: Connection) -> bool:
        return run_rows.insert_task_run_unless_conflicting(connection, taken_id)

    assert database.write(insert_conflicting, one_statement=True) is False
    with database.snapshot() as connection:
        assert connection.execute(select(task_run.c.task_key)).scalars().all() == ["k"]


@pytest.mark.parametrize(
    ("state", "one_statement"),
    [
        (None, True),
        ({"type": "RUNNING"}, True),
        ({"type": "COMPLETED", "state_details": {"cache_key": "c"}}, True),
        ({"type": "SCHEDULED", "state_details": {"deferred": False}}, True),
        # A background task's first state: its rules queue the run once it is written.
        ({"type": "SCHEDULED", "state_details": {"deferred": True}}, False),
    ],
)
def test_every_create_but_a_background_tasks_is_one_statement(
    state: dict[str, object] | None, one_statement: bool
) -> None:
    body = models.TaskRunCreate.model_validate(
        {"task_key": "k", "dynamic_key": "0", "state": state}
    )

    assert creates_in_one_statement(body) is one_statement

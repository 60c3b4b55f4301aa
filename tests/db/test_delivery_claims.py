"""A claim of the next background run reads each of the worker's task keys from the index
of the queue in delivery order: it never reads and sorts every waiting run of its keys,
which made each claim cost as much as the queue is long (16 ms with 50,000 runs waiting).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection

from app.db import deliveries
from app.db.database import Database
from tests.bench.plans import Statement, recording

ORDERED_INDEX = "ix_task_run_delivery__task_key_retry_enqueued_task_run_id"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
# PostgreSQL reads a small table whole and sorts it: made as costly as it can be, a sort
# left in the plan is one the index could not spare.
NOT_WANTED_ON_POSTGRESQL = ("enable_seqscan", "enable_bitmapscan", "enable_sort")


def claim_statement(database: Database, task_keys: list[str]) -> Statement:
    """The statement a claim for `task_keys` sends, with its parameters."""
    with recording(database.engine) as statements, database.transaction() as connection:
        deliveries.claim_next(
            connection,
            task_keys=task_keys,
            claim_id=uuid.uuid4(),
            now=NOW,
            claimed_until=NOW + timedelta(seconds=30),
        )
    [claim] = [s for s in statements if s.sql.lstrip().upper().startswith("UPDATE")]
    return claim


def plan_of(connection: Connection, statement: Statement) -> list[str]:
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters
        )
        return [str(row[3]) for row in rows]
    for setting in NOT_WANTED_ON_POSTGRESQL:
        connection.exec_driver_sql(f"SET {setting} = off")
    rows = connection.exec_driver_sql(f"EXPLAIN {statement.sql}", statement.parameters)
    return [str(row[0]) for row in rows]


@pytest.mark.parametrize("keys", [1, 3])
def test_each_key_is_read_from_the_index_in_delivery_order(database: Database, keys: int) -> None:
    claim = claim_statement(database, [f"key-{number}" for number in range(keys)])

    with database.engine.connect() as connection:
        plan = plan_of(connection, claim)

    assert sum(ORDERED_INDEX in line for line in plan) == keys, plan
    if database.engine.dialect.name == "sqlite":
        # The only sort is of the keys' first runs, one per key.
        assert sum("TEMP B-TREE" in line for line in plan) == 1, plan
    else:
        assert not [line for line in plan if "Sort Key: task_run_delivery" in line], plan

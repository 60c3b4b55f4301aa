"""Indexes for history on PostgreSQL and for name searches on SQLite.

History counts a window of runs by their expected start time. On PostgreSQL the index of
expected_start_time now includes the fields history reads, so that PostgreSQL answers it by
an index-only scan; without them it read the table, and at a million runs chose a parallel
sequential scan of all of it. SQLite keeps that index as it is: there the extra columns
would be rewritten by every change of state.

A name search (`like_`) in the default order, newest id first, read on SQLite each run's
name from the table, one lookup per run, until the page was full; an index of (id, name)
holds the names in that order. PostgreSQL searches names through its trigram index.

Revision ID: e5a17c3b9d42
Revises: 7b3e9f2c4d18
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "e5a17c3b9d42"
down_revision = "7b3e9f2c4d18"
branch_labels = None
depends_on = None

HISTORY_INDEX = "ix_task_run__expected_start_time_id"
# As app/db/tables.py's HISTORY_COLUMNS were when this revision was written.
HISTORY_INCLUDED = ("state_type", "state_name", "total_run_time", "state_timestamp", "start_time")
NAME_SEARCH_INDEX = "ix_task_run__id_name"


def _recreate_history_index(include: tuple[str, ...]) -> None:
    op.drop_index(HISTORY_INDEX, table_name="task_run")
    op.create_index(
        HISTORY_INDEX,
        "task_run",
        ["expected_start_time", "id"],
        postgresql_include=list(include),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate_history_index(HISTORY_INCLUDED)
    else:
        op.create_index(NAME_SEARCH_INDEX, "task_run", ["id", "name"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate_history_index(())
    else:
        op.drop_index(NAME_SEARCH_INDEX, table_name="task_run")

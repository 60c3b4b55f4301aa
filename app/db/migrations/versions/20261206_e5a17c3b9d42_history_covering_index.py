"""On PostgreSQL, the index of task_run.expected_start_time carries the fields history sums.

History counts a window of runs by their expected start time. With the fields it reads in
the index (INCLUDE), PostgreSQL answers it by an index-only scan; without them it read the
table, and at a million runs chose a parallel sequential scan of all of it. SQLite keeps the
index as it is: there the extra columns would be rewritten by every change of state.

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

INDEX = "ix_task_run__expected_start_time_id"
# As app/db/tables.py's HISTORY_COLUMNS were when this revision was written.
INCLUDED = ("state_type", "state_name", "total_run_time", "state_timestamp", "start_time")


def _recreate(include: tuple[str, ...]) -> None:
    op.drop_index(INDEX, table_name="task_run")
    op.create_index(
        INDEX, "task_run", ["expected_start_time", "id"], postgresql_include=list(include)
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(INCLUDED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(())

"""Index task_run.state_id.

Settling the deferred foreign key from task_run.state_id when a state row is inserted makes
SQLite look up the runs that refer to the new state; without an index it scanned them all.

Revision ID: 8c41d2e07a95
Revises: 3f2a9c1d7b40
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "8c41d2e07a95"
down_revision = "3f2a9c1d7b40"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_task_run__state_id"), "task_run", ["state_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_task_run__state_id"), table_name="task_run")

"""The queue of background tasks indexed in the order runs are delivered.

A claim takes a task key's first run by retries first, then the oldest. The index of
(task_key, retry, enqueued) could not give that order (retry descending, enqueued
ascending), so every claim read and sorted all the waiting runs of the worker's keys: 16 ms
a claim with 50,000 runs waiting, while SQLite's writer waited. Indexed with `retry`
descending, a claim reads the first entries of each key.

Revision ID: b6f1c3e8a2d5
Revises: 9d2b6e0f4a71
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b6f1c3e8a2d5"
down_revision = "9d2b6e0f4a71"
branch_labels = None
depends_on = None

TABLE = "task_run_delivery"
UNORDERED_INDEX = "ix_task_run_delivery__task_key_retry_enqueued"
ORDERED_INDEX = "ix_task_run_delivery__task_key_retry_enqueued_task_run_id"


def upgrade() -> None:
    op.create_index(
        ORDERED_INDEX,
        TABLE,
        ["task_key", sa.text("retry DESC"), "enqueued", "task_run_id"],
    )
    op.drop_index(UNORDERED_INDEX, table_name=TABLE)


def downgrade() -> None:
    op.create_index(UNORDERED_INDEX, TABLE, ["task_key", "retry", "enqueued"])
    op.drop_index(ORDERED_INDEX, table_name=TABLE)

"""Create task_run_state_cache: COMPLETED states cached under their cache key.

Revision ID: 5d7e1f3a9b26
Revises: 8c41d2e07a95
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5d7e1f3a9b26"
down_revision = "8c41d2e07a95"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_run_state_cache",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cache_key", sa.Text(), nullable=False),
        sa.Column("cache_expiration", sa.DateTime(timezone=True), nullable=True),
        sa.Column("task_run_state_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_run_state_id"],
            ["task_run_state.id"],
            name=op.f("fk_task_run_state_cache__task_run_state_id__task_run_state"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_run_state_cache")),
    )
    op.create_index(
        op.f("ix_task_run_state_cache__cache_key_created"),
        "task_run_state_cache",
        ["cache_key", "created"],
        unique=False,
    )
    op.create_index(
        op.f("ix_task_run_state_cache__task_run_state_id"),
        "task_run_state_cache",
        ["task_run_state_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_task_run_state_cache__task_run_state_id"), table_name="task_run_state_cache"
    )
    op.drop_index(
        op.f("ix_task_run_state_cache__cache_key_created"), table_name="task_run_state_cache"
    )
    op.drop_table("task_run_state_cache")

"""Create task_run_delivery (the queue of background tasks) and event.

Revision ID: a4c2e8d61f03
Revises: 5d7e1f3a9b26
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a4c2e8d61f03"
down_revision = "5d7e1f3a9b26"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_run_delivery",
        sa.Column("task_run_id", sa.Uuid(), nullable=False),
        sa.Column("task_key", sa.Text(), nullable=False),
        sa.Column("retry", sa.Boolean(), nullable=False),
        sa.Column("enqueued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_id", sa.Uuid(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_run.id"],
            name=op.f("fk_task_run_delivery__task_run_id__task_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_run_id", name=op.f("pk_task_run_delivery")),
    )
    op.create_index(
        op.f("ix_task_run_delivery__task_key_retry_enqueued"),
        "task_run_delivery",
        ["task_key", "retry", "enqueued"],
        unique=False,
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.Column("resource", sa.JSON(), nullable=False),
        sa.Column("related", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("follows", sa.Uuid(), nullable=True),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    op.create_index(op.f("ix_event__occurred"), "event", ["occurred"], unique=False)
    op.create_index(op.f("ix_event__received"), "event", ["received"], unique=False)
    op.create_index(
        op.f("ix_event__resource_id_occurred"), "event", ["resource_id", "occurred"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_event__resource_id_occurred"), table_name="event")
    op.drop_index(op.f("ix_event__received"), table_name="event")
    op.drop_index(op.f("ix_event__occurred"), table_name="event")
    op.drop_table("event")
    op.drop_index(
        op.f("ix_task_run_delivery__task_key_retry_enqueued"), table_name="task_run_delivery"
    )
    op.drop_table("task_run_delivery")

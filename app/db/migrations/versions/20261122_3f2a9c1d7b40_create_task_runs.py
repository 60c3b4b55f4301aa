"""Create the task_run and task_run_state tables.

Revision ID: 3f2a9c1d7b40
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "3f2a9c1d7b40"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_run",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.Uuid(), nullable=True),
        sa.Column("task_key", sa.Text(), nullable=False),
        sa.Column("dynamic_key", sa.Text(), nullable=False),
        sa.Column("cache_key", sa.Text(), nullable=True),
        sa.Column("cache_expiration", sa.DateTime(timezone=True), nullable=True),
        sa.Column("task_version", sa.Text(), nullable=True),
        sa.Column("empirical_policy", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("task_inputs", sa.JSON(), nullable=False),
        sa.Column("state_id", sa.Uuid(), nullable=True),
        sa.Column("state_type", sa.String(length=16), nullable=True),
        sa.Column("state_name", sa.Text(), nullable=True),
        sa.Column("state_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("flow_run_run_count", sa.Integer(), nullable=False),
        sa.Column("expected_start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_scheduled_start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total_run_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_run")),
    )
    op.create_index(
        "uq_task_run__flow_run_id_task_key_dynamic_key",
        "task_run",
        ["flow_run_id", "task_key", "dynamic_key"],
        unique=True,
    )
    op.create_index(
        "uq_task_run__task_key_dynamic_key__without_flow_run",
        "task_run",
        ["task_key", "dynamic_key"],
        unique=True,
        sqlite_where=sa.text("flow_run_id IS NULL"),
        postgresql_where=sa.text("flow_run_id IS NULL"),
    )
    op.create_table(
        "task_run_state",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_run_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("state_details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_run.id"],
            name=op.f("fk_task_run_state__task_run_id__task_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_run_state")),
    )
    op.create_index(
        op.f("ix_task_run_state__task_run_id_timestamp"),
        "task_run_state",
        ["task_run_id", "timestamp"],
        unique=False,
    )
    # The two tables refer to each other, so this key can only come once both exist.
    with op.batch_alter_table("task_run") as batch:
        batch.create_foreign_key(
            op.f("fk_task_run__state_id__task_run_state"),
            "task_run_state",
            ["state_id"],
            ["id"],
            ondelete="SET NULL",
            deferrable=True,
            initially="DEFERRED",
        )


def downgrade() -> None:
    with op.batch_alter_table("task_run") as batch:
        batch.drop_constraint(op.f("fk_task_run__state_id__task_run_state"), type_="foreignkey")
    op.drop_index(op.f("ix_task_run_state__task_run_id_timestamp"), table_name="task_run_state")
    op.drop_table("task_run_state")
    op.drop_index("uq_task_run__task_key_dynamic_key__without_flow_run", table_name="task_run")
    op.drop_index("uq_task_run__flow_run_id_task_key_dynamic_key", table_name="task_run")
    op.drop_table("task_run")

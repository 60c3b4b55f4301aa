"""Indexes for the task-run queries, and task_run_tag (each run's tags, one row per tag).

Revision ID: 7b3e9f2c4d18
Revises: a4c2e8d61f03
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "7b3e9f2c4d18"
down_revision = "a4c2e8d61f03"
branch_labels = None
depends_on = None

# Index name -> columns, on both databases.
INDEXES = {
    "ix_task_run__name_id": ["name", "id"],
    "ix_task_run__state_type_expected_start_time_id": ["state_type", "expected_start_time", "id"],
    "ix_task_run__state_name_id": ["state_name", "id"],
    "ix_task_run__expected_start_time_id": ["expected_start_time", "id"],
    "ix_task_run__next_scheduled_start_time_id": ["next_scheduled_start_time", "id"],
    "ix_task_run__start_time_id": ["start_time", "id"],
    "ix_task_run__end_time_id": ["end_time", "id"],
}
# Index name -> definition, on PostgreSQL only (see app/db/tables.py).
POSTGRESQL_INDEXES = {
    "ix_task_run__state_type_expected_start_time_desc_id_desc": (
        "(state_type, expected_start_time DESC NULLS LAST, id DESC)"
    ),
    "ix_task_run__expected_start_time_desc_id_desc": "(expected_start_time DESC NULLS LAST, id DESC)",
    "ix_task_run__end_time_desc_id_desc": "(end_time DESC NULLS LAST, id DESC)",
    "ix_task_run__lower_name_trgm": "USING gin (lower(name) gin_trgm_ops)",
}
# Every distinct tag of every run (the backfill), but those holding U+0000, which no filter
# can name and PostgreSQL cannot store as text: in the JSON, the escape \u0000 after an even
# number of backslashes. (SQLite's json_each cuts such a string short, so there the tags are
# copied by Python.)
POSTGRESQL_BACKFILL = (
    "INSERT INTO task_run_tag (task_run_id, tag) "
    "SELECT DISTINCT task_run.id, element #>> '{}' "
    "FROM task_run, json_array_elements(task_run.tags) AS element "
    r"WHERE element::text !~ '(^|[^\\])(\\\\)*\\u0000'"
)
BATCH = 10_000


def backfill_tags(connection: sa.Connection, *, batch: int = BATCH) -> None:
    if connection.dialect.name == "postgresql":
        op.execute(POSTGRESQL_BACKFILL)
        return
    # `batch` runs at a time, in the order of their ids: a table of any size never has to
    # fit in memory.
    runs = sa.table("task_run", sa.column("id", sa.Uuid()), sa.column("tags", sa.JSON()))
    tags = sa.table("task_run_tag", sa.column("task_run_id", sa.Uuid()), sa.column("tag"))
    in_id_order = sa.select(runs.c.id, runs.c.tags).order_by(runs.c.id).limit(batch)
    page = connection.execute(in_id_order).all()
    while page:
        rows = [
            {"task_run_id": run_id, "tag": tag}
            for run_id, run_tags in page
            for tag in dict.fromkeys(run_tags)
            if "\x00" not in tag
        ]
        if rows:
            connection.execute(tags.insert(), rows)
        if len(page) < batch:
            return
        page = connection.execute(in_id_order.where(runs.c.id > page[-1].id)).all()


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "task_run_tag",
        sa.Column("task_run_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_run.id"],
            name=op.f("fk_task_run_tag__task_run_id__task_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_run_id", "tag", name=op.f("pk_task_run_tag")),
    )
    op.create_index(
        op.f("ix_task_run_tag__tag_task_run_id"), "task_run_tag", ["tag", "task_run_id"]
    )
    backfill_tags(op.get_bind())
    if dialect == "postgresql":
        op.execute('ALTER TABLE task_run ALTER COLUMN name TYPE text COLLATE "C"')
    for name, columns in INDEXES.items():
        op.create_index(op.f(name), "task_run", columns)
    if dialect == "postgresql":
        # A trusted extension: the database's owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, definition in POSTGRESQL_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON task_run {definition}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for name in POSTGRESQL_INDEXES:
            op.execute(f"DROP INDEX {name}")
    for name in INDEXES:
        op.drop_index(op.f(name), table_name="task_run")
    if dialect == "postgresql":
        op.execute('ALTER TABLE task_run ALTER COLUMN name TYPE text COLLATE "default"')
    op.drop_index(op.f("ix_task_run_tag__tag_task_run_id"), table_name="task_run_tag")
    op.drop_table("task_run_tag")

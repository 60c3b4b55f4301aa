"""The cache of COMPLETED states found by a hash of the key on PostgreSQL.

A B-tree entry on PostgreSQL holds at most about 2700 bytes, and a cache key of 2000
characters (the longest the API takes) may take up to 8000 in UTF-8: a COMPLETED state
carrying such a key failed. A hash index has no such bound; a proposal looks a key up by
equality alone and orders the few entries of that key itself. SQLite keeps its index of
(cache_key, created).

Revision ID: c81d4f6a2e57
Revises: e5a17c3b9d42
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "c81d4f6a2e57"
down_revision = "e5a17c3b9d42"
branch_labels = None
depends_on = None

ORDERED_INDEX = "ix_task_run_state_cache__cache_key_created"
HASH_INDEX = "ix_task_run_state_cache__cache_key_hash"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(HASH_INDEX, "task_run_state_cache", ["cache_key"], postgresql_using="hash")
    op.drop_index(ORDERED_INDEX, table_name="task_run_state_cache")


# The longest key, in bytes, whose entry the ordered index holds (a B-tree entry on
# PostgreSQL holds at most about 2700 bytes, the creation time included).
LONGEST_ORDERED_KEY_BYTES = 2600


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Entries the older index cannot hold are forgotten: they are a cache, and a run that
    # asks for such a key runs instead of being served from it. Deleted by a transaction of
    # their own: the index below would still take in rows deleted by its own.
    with op.get_context().autocommit_block():
        op.execute(
            "DELETE FROM task_run_state_cache"
            f" WHERE octet_length(cache_key) > {LONGEST_ORDERED_KEY_BYTES}"
        )
    op.create_index(ORDERED_INDEX, "task_run_state_cache", ["cache_key", "created"])
    op.drop_index(HASH_INDEX, table_name="task_run_state_cache")

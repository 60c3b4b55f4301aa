"""The records the domain works with hold exactly the columns of their tables."""

from __future__ import annotations

from app.db.records import CACHE_ENTRY_COLUMNS, TASK_RUN_COLUMNS, TASK_RUN_STATE_COLUMNS
from app.db.tables import task_run, task_run_state, task_run_state_cache


def test_task_run_record_matches_its_table() -> None:
    assert set(TASK_RUN_COLUMNS) == set(task_run.c.keys())


def test_state_record_matches_its_table() -> None:
    assert set(TASK_RUN_STATE_COLUMNS) == set(task_run_state.c.keys())


def test_cache_entry_record_matches_its_table() -> None:
    assert set(CACHE_ENTRY_COLUMNS) == set(task_run_state_cache.c.keys())

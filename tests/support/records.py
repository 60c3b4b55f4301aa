"""Records built by hand, for unit tests of the domain on plain objects."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from app.db.records import TaskRunRecord

START = datetime(2030, 1, 1, tzinfo=UTC)


def fresh_run() -> TaskRunRecord:
    """A run that has not entered any state yet."""
    return TaskRunRecord(
        id=uuid4(),
        created=START,
        updated=START,
        name="a-run",
        task_key="t",
        dynamic_key="d",
        cache_key=None,
        cache_expiration=None,
        task_version=None,
        empirical_policy={},
        tags=[],
        labels={},
        task_inputs={},
        flow_run_run_count=0,
        flow_run_id=None,
        state_id=None,
        state_type=None,
        state_name=None,
        state_timestamp=None,
        run_count=0,
        expected_start_time=None,
        next_scheduled_start_time=None,
        start_time=None,
        end_time=None,
        total_run_time=0.0,
    )

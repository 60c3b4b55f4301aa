"""What orchestration keeps beyond the run, in the database: the cache of COMPLETED states,
the queue of background tasks.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from app.db import deliveries
from app.db import task_run_states as rows
from app.db.records import CacheEntryRecord, TaskRunRecord, TaskRunStateRecord
from app.services.clock import utcnow
from app.services.ids import uuid7


class DatabaseOrchestrationStore:
    """The rules' OrchestrationStore, over the connection of the current transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def cached_state(self, cache_key: str, *, now: datetime) -> TaskRunStateRecord | None:
        """The newest state cached under `cache_key` that has not expired at `now`."""
        return rows.find_cached_state(self._connection, cache_key=cache_key, now=now)

    def cache(self, state: TaskRunStateRecord) -> None:
        """Cache a written state under its `state_details.cache_key`, until its expiration."""
        expiration = state.state_details.get("cache_expiration")
        entry = CacheEntryRecord(
            id=uuid7(),
            created=state.timestamp,
            cache_key=state.state_details["cache_key"],
            cache_expiration=datetime.fromisoformat(expiration) if expiration else None,
            task_run_state_id=state.id,
        )
        rows.insert_cache_entry(self._connection, entry)

    def enqueue(self, run: TaskRunRecord, *, retry: bool) -> None:
        """Put the run on its task key's queue; waiting task workers learn of it at commit."""
        deliveries.enqueue(
            self._connection, task_run_id=run.id, task_key=run.task_key, retry=retry, now=utcnow()
        )

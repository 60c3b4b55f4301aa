"""The cache of COMPLETED states, kept in the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from app.db import task_run_states as rows
from app.db.records import CacheEntryRecord, TaskRunStateRecord
from app.services.ids import uuid7


class DatabaseStateCache:
    """The orchestration rules' StateCache, over the connection of the current transaction."""

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

"""Rows as plain objects: what the domain reads, changes and hands back to be stored."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(slots=True, kw_only=True)
class TaskRunRecord:
    """A row of `task_run`."""

    id: UUID
    created: datetime
    updated: datetime
    name: str
    flow_run_id: UUID | None
    task_key: str
    dynamic_key: str
    cache_key: str | None
    cache_expiration: datetime | None
    task_version: str | None
    empirical_policy: dict[str, Any]
    tags: list[str]
    labels: dict[str, Any]
    task_inputs: dict[str, Any]
    state_id: UUID | None
    state_type: str | None
    state_name: str | None
    state_timestamp: datetime | None
    run_count: int
    flow_run_run_count: int
    expected_start_time: datetime | None
    next_scheduled_start_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    total_run_time: float

    def values(self) -> dict[str, Any]:
        """Column name -> value, as an INSERT takes them."""
        return {name: getattr(self, name) for name in TASK_RUN_COLUMNS}


@dataclass(slots=True, kw_only=True)
class TaskRunStateRecord:
    """A row of `task_run_state`."""

    id: UUID
    created: datetime
    task_run_id: UUID
    type: str
    name: str
    timestamp: datetime
    message: str | None
    data: Any
    state_details: dict[str, Any]

    def values(self) -> dict[str, Any]:
        """Column name -> value, as an INSERT takes them."""
        return {name: getattr(self, name) for name in TASK_RUN_STATE_COLUMNS}


@dataclass(slots=True, kw_only=True)
class CacheEntryRecord:
    """A row of `task_run_state_cache`."""

    id: UUID
    created: datetime
    cache_key: str
    cache_expiration: datetime | None
    task_run_state_id: UUID

    def values(self) -> dict[str, Any]:
        """Column name -> value, as an INSERT takes them."""
        return {name: getattr(self, name) for name in CACHE_ENTRY_COLUMNS}


@dataclass(slots=True, kw_only=True)
class EventRecord:
    """A row of `event`: an event as a client sent it, and when it was received."""

    id: UUID
    occurred: datetime
    event: str
    resource_id: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]
    follows: UUID | None
    received: datetime

    def values(self) -> dict[str, Any]:
        """Column name -> value, as an INSERT takes them."""
        return {name: getattr(self, name) for name in EVENT_COLUMNS}


TASK_RUN_COLUMNS = tuple(field.name for field in fields(TaskRunRecord))
TASK_RUN_STATE_COLUMNS = tuple(field.name for field in fields(TaskRunStateRecord))
CACHE_ENTRY_COLUMNS = tuple(field.name for field in fields(CacheEntryRecord))
EVENT_COLUMNS = tuple(field.name for field in fields(EventRecord))

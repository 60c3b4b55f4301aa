"""Which events a follower of /api/events/out wants: Prefect's event filter, in part."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from app.db.records import EventRecord
from app.services.clock import to_utc, utcnow

# How far back the stored events a new follower receives go, at most.
BACKFILL_LIMIT = timedelta(minutes=15)
# The parts of a filter the service applies; any other part given (not null) is refused.
SUPPORTED = {
    "occurred": {"since", "until"},
    "event": {"prefix", "exclude_prefix", "name", "exclude_name"},
    "resource": {"id", "id_prefix"},
    "related": {"id", "role"},
    "any_resource": {"id", "id_prefix"},
    "id": {"id"},
    "order": set(),
}


class UnsupportedFilter(ValueError):
    """The filter asks for something the service cannot apply."""


@dataclass(frozen=True)
class EventFilter:
    """The parts of a filter that were given; an empty tuple does not filter."""

    since: datetime
    until: datetime
    prefixes: tuple[str, ...] = ()
    excluded_prefixes: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    excluded_names: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    resource_id_prefixes: tuple[str, ...] = ()
    related_ids: tuple[str, ...] = ()
    related_roles: tuple[str, ...] = ()
    any_resource_ids: tuple[str, ...] = ()
    any_resource_id_prefixes: tuple[str, ...] = ()
    event_ids: tuple[UUID, ...] = ()

    def backfill_since(self, now: datetime) -> datetime:
        """Where the stored events a follower receives first begin."""
        return max(self.since, now - BACKFILL_LIMIT)

    def matches(self, record: EventRecord) -> bool:
        """Whether the event passes every part of the filter."""
        name, resource_id = record.event, record.resource_id
        related_ids = [resource["prefect.resource.id"] for resource in record.related]
        every_id = [resource_id, *related_ids]
        return all(
            (
                self.since <= record.occurred <= self.until,
                not self.prefixes or name.startswith(self.prefixes),
                not name.startswith(self.excluded_prefixes),
                not self.names or name in self.names,
                name not in self.excluded_names,
                not self.resource_ids or resource_id in self.resource_ids,
                not self.resource_id_prefixes or resource_id.startswith(self.resource_id_prefixes),
                not self.related_ids or any(i in self.related_ids for i in related_ids),
                not self.related_roles
                or any(
                    r.get("prefect.resource.role") in self.related_roles for r in record.related
                ),
                not self.any_resource_ids or any(i in self.any_resource_ids for i in every_id),
                not self.any_resource_id_prefixes
                or any(i.startswith(self.any_resource_id_prefixes) for i in every_id),
                not self.event_ids or record.id in self.event_ids,
            )
        )


def parse_filter(given: dict[str, Any]) -> EventFilter:
    """The filter of a `filter` frame (already checked against asyncapi.yaml).

    :raises UnsupportedFilter: it gives a part the service does not apply.
    """
    for part, value in given.items():
        if value is None:
            continue
        if part not in SUPPORTED:
            raise UnsupportedFilter(f"filtering by {part!r} is not supported")
        if isinstance(value, dict):
            for key, criterion in value.items():
                if criterion is not None and key not in SUPPORTED[part]:
                    raise UnsupportedFilter(f"filtering by {part}.{key} is not supported")
    now = utcnow()
    occurred = given.get("occurred") or {}
    event = given.get("event") or {}
    resource = given.get("resource") or {}
    related = given.get("related") or {}
    any_resource = given.get("any_resource") or {}
    ids = given.get("id") or {}
    return EventFilter(
        since=_time(occurred.get("since"), default=now - BACKFILL_LIMIT),
        until=_time(occurred.get("until"), default=now + timedelta(days=365)),
        prefixes=_strings(event.get("prefix")),
        excluded_prefixes=_strings(event.get("exclude_prefix")),
        names=_strings(event.get("name")),
        excluded_names=_strings(event.get("exclude_name")),
        resource_ids=_strings(resource.get("id")),
        resource_id_prefixes=_strings(resource.get("id_prefix")),
        related_ids=_strings(related.get("id")),
        related_roles=_strings(related.get("role")),
        any_resource_ids=_strings(any_resource.get("id")),
        any_resource_id_prefixes=_strings(any_resource.get("id_prefix")),
        event_ids=tuple(UUID(value) for value in ids.get("id") or ()),
    )


def _strings(values: list[str] | None) -> tuple[str, ...]:
    return tuple(values or ())


def _time(value: str | None, *, default: datetime) -> datetime:
    return to_utc(datetime.fromisoformat(value)) if value else default

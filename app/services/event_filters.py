"""Which events a follower of /api/events/out wants: Prefect's event filter, in part."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from app.db.records import EventRecord
from app.services.clock import UnrepresentableInstant, parse_instant, utcnow

# How far back the events a new follower receives go, at most: the stored ones it is sent
# first, and the live ones after them.
BACKFILL_LIMIT = timedelta(minutes=15)
# The parts of a filter the service applies; any other part given (not null) is refused.
SUPPORTED = {
    "occurred": {"since", "until"},
    "event": {"prefix", "exclude_prefix", "name", "exclude_name"},
    "resource": {"id", "id_prefix", "distinct"},
    "related": {"id", "role"},
    "any_resource": {"id", "id_prefix"},
    "id": {"id"},
    "order": set(),
}
ROLE = "prefect.resource.role"
# A filter without `until` follows the events that occur up to this long after it began.
FOLLOW_AT_MOST = timedelta(days=365)


class UnsupportedFilter(ValueError):
    """The filter asks for something the service cannot apply."""


@dataclass(frozen=True)
class ResourceCriterion:
    """What one resource must be: each part that was given (an empty tuple does not filter)."""

    ids: frozenset[str] = frozenset()
    id_prefixes: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()

    def matches(self, resource_id: str, role: str | None) -> bool:
        return (
            (not self.ids or resource_id in self.ids)
            and (not self.id_prefixes or resource_id.startswith(self.id_prefixes))
            and (not self.roles or role in self.roles)
        )

    @property
    def restricts(self) -> bool:
        """Whether any part was given: a criterion of none asks for nothing, not even a
        resource to meet it (as Prefect's filters add no clause for it).
        """
        return bool(self.ids or self.id_prefixes or self.roles)

    def met_by_one_of(self, resources: list[tuple[str, str | None]]) -> bool:
        return any(self.matches(resource_id, role) for resource_id, role in resources)


@dataclass(frozen=True)
class EventFilter:
    """The parts of a filter that were given; an empty tuple does not filter."""

    since: datetime
    until: datetime
    prefixes: tuple[str, ...] = ()
    excluded_prefixes: tuple[str, ...] = ()
    names: frozenset[str] = frozenset()
    excluded_names: frozenset[str] = frozenset()
    resource: ResourceCriterion = ResourceCriterion()
    # Each criterion needs a related resource of its own that meets all of it.
    related: tuple[ResourceCriterion, ...] = ()
    # Each criterion needs one resource, the event's own or a related one, that meets it.
    any_resource: tuple[ResourceCriterion, ...] = ()
    event_ids: frozenset[UUID] = frozenset()

    def backfill_since(self, now: datetime) -> datetime:
        """Where the stored events a follower receives first begin."""
        return max(self.since, now - BACKFILL_LIMIT)

    def matches(self, record: EventRecord) -> bool:
        """Whether the event passes every part of the filter."""
        name = record.event
        related = [(r["prefect.resource.id"], r.get(ROLE)) for r in record.related]
        every_resource = [(record.resource_id, None), *related]
        # Cheapest first, each part looked at only while the others held.
        return (
            self.since <= record.occurred <= self.until
            and (not self.event_ids or record.id in self.event_ids)
            and (not self.names or name in self.names)
            and name not in self.excluded_names
            and (not self.prefixes or name.startswith(self.prefixes))
            and not name.startswith(self.excluded_prefixes)
            and self.resource.matches(record.resource_id, None)
            and all(criterion.met_by_one_of(related) for criterion in self.related)
            and all(criterion.met_by_one_of(every_resource) for criterion in self.any_resource)
        )


def parse_filter(given: dict[str, Any]) -> EventFilter:
    """The filter of a `filter` frame (already checked against asyncapi.yaml).

    Its `since` is at most BACKFILL_LIMIT ago, for the stored events and the live ones
    alike, as in Prefect's server.

    :raises UnsupportedFilter: it gives a part the service does not apply, or an instant
        the service cannot hold.
    """
    for part, value in given.items():
        if value is not None and part not in SUPPORTED:
            raise UnsupportedFilter(f"filtering by {part!r} is not supported")
        for criterion in _criteria(value):
            for key, wanted in criterion.items():
                if wanted is not None and key not in SUPPORTED[part]:
                    raise UnsupportedFilter(f"filtering by {part}.{key} is not supported")
    resource = given.get("resource") or {}
    if resource.get("distinct"):
        # `distinct: false`, which Prefect's client always sends, asks for nothing.
        raise UnsupportedFilter("filtering by resource.distinct is not supported")
    now = utcnow()
    earliest = now - BACKFILL_LIMIT
    occurred = given.get("occurred") or {}
    event = given.get("event") or {}
    ids = given.get("id") or {}
    return EventFilter(
        since=max(_time(occurred, "since", default=earliest), earliest),
        until=_time(occurred, "until", default=now + FOLLOW_AT_MOST),
        prefixes=_strings(event.get("prefix")),
        excluded_prefixes=_strings(event.get("exclude_prefix")),
        names=frozenset(_strings(event.get("name"))),
        excluded_names=frozenset(_strings(event.get("exclude_name"))),
        resource=_resource_criterion(resource),
        related=_restricting(given.get("related")),
        any_resource=_restricting(given.get("any_resource")),
        event_ids=frozenset(UUID(value) for value in ids.get("id") or ()),
    )


def _criteria(value: Any) -> list[dict[str, Any]]:
    """A part's criteria: one object, or a list of them that must all be met."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [criterion for criterion in value if isinstance(criterion, dict)]
    return []


def _restricting(value: Any) -> tuple[ResourceCriterion, ...]:
    """The criteria of a part that ask for something."""
    criteria = (_resource_criterion(criterion) for criterion in _criteria(value))
    return tuple(criterion for criterion in criteria if criterion.restricts)


def _resource_criterion(given: dict[str, Any]) -> ResourceCriterion:
    return ResourceCriterion(
        ids=frozenset(_strings(given.get("id"))),
        id_prefixes=_strings(given.get("id_prefix")),
        roles=frozenset(_strings(given.get("role"))),
    )


def _strings(values: list[str] | None) -> tuple[str, ...]:
    return tuple(values or ())


def _time(occurred: dict[str, str | None], bound: str, *, default: datetime) -> datetime:
    """The instant `occurred.<bound>` gives, or `default` when it gives none."""
    value = occurred.get(bound)
    if not value:
        return default
    try:
        return parse_instant(value)
    except UnrepresentableInstant as problem:
        raise UnsupportedFilter(f"invalid filter: occurred.{bound}: {problem}") from None

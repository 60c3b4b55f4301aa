"""Time: the server's clock and the normalisation of client datetimes to UTC."""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC; instants outside years 1-9999 in UTC become the nearest bound.

    `0001-01-01T00:00:00+00:03` is a valid RFC 3339 datetime whose UTC instant falls in year 0,
    which Python (and so the service) cannot represent. A datetime without an offset (only
    an event's payload can hold one) is taken as UTC, never as the server's local time.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year == EARLIEST.year else LATEST

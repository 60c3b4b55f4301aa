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


class UnrepresentableInstant(ValueError):
    """An RFC 3339 date-time that no Python datetime holds."""


def parse_instant(text: str) -> datetime:
    """The UTC instant of an RFC 3339 date-time (one the contract's `date-time` format admits).

    RFC 3339 allows a lower-case `t` and `z`, which `fromisoformat` does not read.

    :raises UnrepresentableInstant: a leap second (`23:59:60`) or a date in year 0, which
        RFC 3339 allows and Python's datetime cannot hold (the API refuses both too).
    """
    try:
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        # Not the parser's message: it can quote the text.
        raise UnrepresentableInstant(
            "a leap second or a date in year 0, which the service cannot hold"
        ) from None
    return to_utc(parsed)

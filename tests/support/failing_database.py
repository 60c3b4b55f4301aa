"""A stand-in for the Database whose every transaction and snapshot fails: for the service's
work in the background, which must log a fault and try again later.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FailingDatabase:
    """Refuses every transaction and snapshot with `error`, counting the attempts."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        self.attempts += 1
        raise self.error
        yield  # pragma: no cover

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        self.attempts += 1
        raise self.error
        yield  # pragma: no cover

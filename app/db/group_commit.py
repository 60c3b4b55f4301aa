"""Group commit: the SQLite writes that wait for their turn are committed together.

An SQLite commit in `synchronous=FULL` waits for the disk (an fsync, about as long as the
rest of a create), and writers take turns: under load most of a writer's time is waiting for
the others' fsyncs. Here a writer that finds another one at work queues its unit of work;
when the turn comes, one thread (the leader, itself a writer) runs every queued unit in one
transaction, each in a SAVEPOINT of its own, and commits once. Each writer is answered only
after that commit returned, so nothing is acknowledged before it is on the disk.

A unit that raises is rolled back to its savepoint and its writer gets the exception; the
others are committed. A fault of the database itself (it refuses writes, the writer's turn
never came) fails the whole batch: nothing of it was written.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

_Result = TypeVar("_Result")


class NestedWrite(RuntimeError):
    """A unit of work asked for another write: it would wait for its own batch forever."""


class WriteUnit(Generic[_Result]):
    """One writer's work, its outcome, and the context (context variables) it runs in."""

    def __init__(self, work: Callable[..., _Result]) -> None:
        self.work = work
        self.context = contextvars.copy_context()
        # When its writer began to wait (time.monotonic()).
        self.queued_at = time.monotonic()
        self.done = False
        self._result: _Result | None = None
        self._error: BaseException | None = None

    def run(self, *args: Any) -> None:
        """Do the work in the writer's context, keeping its result or exception."""
        try:
            self._result = self.context.run(self.work, *args)
        except BaseException as error:  # handed over to the writer's thread
            self._error = error

    def fail(self, error: BaseException) -> None:
        """Replace the outcome: the batch it was part of was not committed."""
        self._result = None
        self._error = error

    @property
    def error(self) -> BaseException | None:
        """What the work raised, if it did."""
        return self._error

    def outcome(self) -> _Result:
        """The result, or the exception raised in the writer's thread."""
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class GroupCommit:
    """Queues this process's writers and lets one of them commit each batch.

    `commit_batch` runs a list of units in one transaction and commits it (or marks them
    failed); it runs in the leader's thread, one batch at a time.
    """

    def __init__(self, commit_batch: Callable[[list[WriteUnit[Any]]], None]) -> None:
        self._commit_batch = commit_batch
        self._changed = threading.Condition(threading.Lock())
        self._queue: list[WriteUnit[Any]] = []
        self._leading = False
        self._in_batch = threading.local()

    @property
    def queued(self) -> int:
        """How many writers wait for the next batch."""
        with self._changed:
            return len(self._queue)

    def write(self, work: Callable[..., _Result]) -> _Result:
        """Run `work` in the next batch; its result once the batch is committed."""
        if getattr(self._in_batch, "active", False):
            raise NestedWrite("a unit of work cannot write again: use its connection")
        unit: WriteUnit[_Result] = WriteUnit(work)
        batch = self._join(unit)
        if batch is not None:
            self._lead(batch)
        return unit.outcome()

    def _join(self, unit: WriteUnit[Any]) -> list[WriteUnit[Any]] | None:
        """Queue `unit`; wait until it is done (None) or this thread leads the next batch."""
        with self._changed:
            self._queue.append(unit)
            while not unit.done:
                if not self._leading:
                    self._leading = True
                    batch, self._queue = self._queue, []
                    return batch
                self._changed.wait()
        return None

    def _lead(self, batch: list[WriteUnit[Any]]) -> None:
        self._in_batch.active = True
        try:
            self._commit_batch(batch)
        except BaseException as error:  # each writer raises it in its thread
            for unit in batch:
                unit.fail(error)
        finally:
            self._in_batch.active = False
            with self._changed:
                for unit in batch:
                    unit.done = True
                self._leading = False
                self._changed.notify_all()

"""Group commit: the SQLite writes that wait for their turn are committed together.

An SQLite commit in `synchronous=FULL` waits for the disk (an fsync, about as long as the
rest of a create), and writers take turns: under load most of a writer's time is waiting for
the others' fsyncs. Here a writer that finds another one at work queues its unit of work;
one thread (the leader, itself a writer) waits for the turn and, once it has it, runs every
unit queued by then (those that arrived while it waited too) in one transaction, each in a
SAVEPOINT of its own, and commits once. Each writer is answered only after that commit
returned, so nothing is acknowledged before it is on the disk.

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


class Batch:
    """The units a leader commits: those queued when it takes them, once the turn is its."""

    def __init__(self, group: GroupCommit) -> None:
        self._group = group
        self.units: list[WriteUnit[Any]] = []
        self.taken = False

    @property
    def oldest_queued_at(self) -> float:
        """When the writer that has waited longest began to wait."""
        return self._group.oldest_queued_at()

    def take(self) -> list[WriteUnit[Any]]:
        """Every unit queued now; later ones wait for the next batch."""
        self.units = self._group.take_queued()
        self.taken = True
        return self.units


class GroupCommit:
    """Queues this process's writers and lets one of them commit each batch.

    `commit_batch` waits for the writer's turn, takes the batch's units, runs them in one
    transaction and commits it; it runs in the leader's thread, one batch at a time. If it
    raises, every unit of the batch (every queued one, if it raised before taking them) gets
    the exception.
    """

    def __init__(self, commit_batch: Callable[[Batch], None]) -> None:
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

    def oldest_queued_at(self) -> float:
        """When the writer queued longest began to wait (now, if none is queued)."""
        with self._changed:
            return self._queue[0].queued_at if self._queue else time.monotonic()

    def take_queued(self) -> list[WriteUnit[Any]]:
        """Remove and return every queued unit."""
        with self._changed:
            units, self._queue = self._queue, []
            return units

    def write(self, work: Callable[..., _Result]) -> _Result:
        """Run `work` in the next batch; its result once the batch is committed."""
        if getattr(self._in_batch, "active", False):
            raise NestedWrite("a unit of work cannot write again: use its connection")
        unit: WriteUnit[_Result] = WriteUnit(work)
        with self._changed:
            self._queue.append(unit)
        if self._wait_or_lead(unit):
            # The batch takes every queued unit, this one included, or fails them all.
            self._lead()
        return unit.outcome()

    def _wait_or_lead(self, unit: WriteUnit[Any]) -> bool:
        """Wait until the queued `unit` is done (False) or this thread is to lead the next
        batch (True).
        """
        with self._changed:
            while not unit.done:
                if not self._leading:
                    self._leading = True
                    return True
                self._changed.wait()
        return False

    def _lead(self) -> None:
        batch = Batch(self)
        self._in_batch.active = True
        try:
            self._commit_batch(batch)
        except BaseException as error:  # each writer raises it in its thread
            for unit in batch.units if batch.taken else batch.take():
                unit.fail(error)
        finally:
            self._in_batch.active = False
            with self._changed:
                for unit in batch.units:
                    unit.done = True
                self._leading = False
                self._changed.notify_all()

"""A proposed change of state of one run, and the decision the rules reach about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from app.db.records import TaskRunRecord, TaskRunStateRecord
from generated import models

StateType = models.StateType
Details = (
    models.StateAcceptDetails
    | models.StateRejectDetails
    | models.StateWaitDetails
    | models.StateAbortDetails
)


class TransitionError(RuntimeError):
    """A rule read a state the transition does not have: the rule governs the wrong types."""


class OrchestrationStore(Protocol):
    """What the rules read and write beyond the run: the cache of COMPLETED states, and the
    queue of background tasks.
    """

    def cached_state(self, cache_key: str, *, now: datetime) -> TaskRunStateRecord | None:
        """The newest state cached under `cache_key` that has not expired at `now`."""
        ...

    def cache(self, state: TaskRunStateRecord) -> None:
        """Cache a written COMPLETED state under its `state_details.cache_key`."""
        ...

    def enqueue(self, run: TaskRunRecord, *, retry: bool) -> None:
        """Put a background task's run on the queue of its task key for a task worker."""
        ...


@dataclass
class Transition:
    """The run's current state, the state proposed for it, and what the rules made of it.

    Rules change the transition only through `reject`, `wait`, `abort` and `rename`, and the
    run's counters (`run.run_count`); the bookkeeping of the state finally written follows.

    `now` is the server's clock, which the rules compare times with (scheduled times, cache
    expirations, retry delays). A state that replaces the proposal bears the proposal's
    timestamp: later than the current state's, which a client's clock may have set ahead.
    """

    run: TaskRunRecord
    initial: TaskRunStateRecord | None
    proposed: TaskRunStateRecord | None
    now: datetime
    status: models.SetStateStatus = models.SetStateStatus.ACCEPT
    details: Details = field(default_factory=models.StateAcceptDetails)

    @property
    def initial_type(self) -> StateType | None:
        """The type of the run's current state (None for a run without one)."""
        return StateType(self.initial.type) if self.initial is not None else None

    @property
    def proposed_type(self) -> StateType | None:
        """The type of the state that would be written (None: nothing will be)."""
        return StateType(self.proposed.type) if self.proposed is not None else None

    @property
    def current(self) -> TaskRunStateRecord:
        """The run's current state, for rules that only govern runs that have one."""
        if self.initial is None:
            raise TransitionError("the run has no state yet")
        return self.initial

    @property
    def proposal(self) -> TaskRunStateRecord:
        """The state still proposed; rules decide only while there is one."""
        if self.proposed is None:
            raise TransitionError("no state is proposed any more")
        return self.proposed

    def reject(self, reason: str, *, replacement: TaskRunStateRecord | None) -> None:
        """Write `replacement` instead of the proposed state, or nothing if it is None."""
        self.proposed = replacement
        self.status = models.SetStateStatus.REJECT
        self.details = models.StateRejectDetails(reason=reason)

    def wait(self, reason: str, *, delay_seconds: int) -> None:
        """Write nothing; the client proposes again after `delay_seconds`."""
        self.proposed = None
        self.status = models.SetStateStatus.WAIT
        self.details = models.StateWaitDetails(reason=reason, delay_seconds=delay_seconds)

    def abort(self, reason: str) -> None:
        """Write nothing; the client must not go on with the run."""
        self.proposed = None
        self.status = models.SetStateStatus.ABORT
        self.details = models.StateAbortDetails(reason=reason)

    def rename(self, name: str) -> None:
        """Give the proposed state another name; its type, and so the transition, stay."""
        if self.proposed is not None:
            self.proposed.name = name

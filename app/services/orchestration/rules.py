"""The orchestration rules of task runs, each a small unit that says what it governs.

A rule governs a transition when the run's current state type is in `from_types` and the
proposed type is in `to_types` (None stands for "no current state"). The rules were written
from the behaviour of Prefect 3.9.1's server; their names are Prefect's, so that the two can be
compared rule by rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from app.db.records import TaskRunStateRecord
from app.services.clock import EARLIEST, LATEST
from app.services.orchestration.transition import OrchestrationStore, Transition
from app.services.states import (
    TERMINAL_STATE_TYPES,
    holds_persisted_data,
    scheduled_time_of,
    state_row,
)
from generated import models

StateType = models.StateType
ANY_STATE: frozenset[StateType | None] = frozenset({*StateType, None})
ANY_TYPE: frozenset[StateType] = frozenset(StateType)


class Rule:
    """One decision about a transition; a subclass names the transitions it governs."""

    from_types: ClassVar[frozenset[StateType | None]] = frozenset()
    to_types: ClassVar[frozenset[StateType]] = frozenset()

    @classmethod
    def governs(cls, initial: StateType | None, proposed: StateType | None) -> bool:
        """Whether the rule applies to a transition from `initial` to `proposed`."""
        return initial in cls.from_types and proposed in cls.to_types

    def before(self, transition: Transition, store: OrchestrationStore) -> None:
        """Decide, before anything is written."""

    def acts_after(self, transition: Transition) -> bool:  # noqa: ARG002
        """Whether `after` would change data once the state proposed now is written."""
        return False

    def after(self, transition: Transition, store: OrchestrationStore) -> None:
        """Act on the state that was written, when it is the one this rule let through."""

    def undo(self, transition: Transition) -> None:
        """Take back what `before` did to the run: a later rule changed the transition."""


class CacheRetrieval(Rule):
    """A RUNNING proposal with a cache key gets the newest unexpired COMPLETED state cached
    under that key, as a new state named "Cached", unless it asks to refresh the cache.
    """

    from_types = ANY_STATE
    to_types = frozenset({StateType.RUNNING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:
        proposed = transition.proposal
        cache_key = proposed.state_details.get("cache_key")
        if not cache_key or proposed.state_details.get("refresh_cache"):
            return
        cached = store.cached_state(cache_key, now=transition.now)
        if cached is not None:
            transition.reject(
                "Retrieved state from cache", replacement=_cached_copy(transition, cached)
            )


def _cached_copy(transition: Transition, cached: TaskRunStateRecord) -> TaskRunStateRecord:
    return state_row(
        task_run=transition.run,
        state_type=StateType(cached.type),
        name="Cached",
        message=cached.message,
        data=cached.data,
        details=models.StateDetails.model_validate(cached.state_details),
        now=transition.proposal.timestamp,
    )


class HandleTaskTerminalStateTransitions(Rule):
    """A run in a terminal state cannot become CANCELLING, PAUSED or CRASHED, nor leave a
    COMPLETED state that holds persisted data; leaving a terminal state for a non-terminal one
    starts the run's count afresh (so its retries start afresh too).
    """

    from_types = frozenset(TERMINAL_STATE_TYPES)
    to_types = ANY_TYPE

    def __init__(self) -> None:
        self._run_count_before: int | None = None

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        initial, proposed = transition.current, transition.proposal
        if proposed.type in (StateType.CANCELLING, StateType.PAUSED, StateType.CRASHED):
            transition.abort(f"Run is already {initial.type}.")
        elif initial.type == StateType.COMPLETED and holds_persisted_data(initial):
            transition.reject("This run is already completed.", replacement=None)
        elif StateType(proposed.type) not in TERMINAL_STATE_TYPES:
            self._run_count_before = transition.run.run_count
            transition.run.run_count = 0

    def undo(self, transition: Transition) -> None:
        if self._run_count_before is not None:
            transition.run.run_count = self._run_count_before


class PreventPendingTransitions(Rule):
    """A background run that is PENDING, RUNNING, CANCELLING or CANCELLED cannot go back to
    PENDING: a second worker that picked up the same run stops there. A PENDING run may move
    on to a PENDING state of another name than "Pending", keeping its scheduled time and its
    deployment concurrency lease.
    """

    from_types = frozenset(
        {StateType.PENDING, StateType.CANCELLING, StateType.RUNNING, StateType.CANCELLED}
    )
    to_types = frozenset({StateType.PENDING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        initial, proposed = transition.current, transition.proposal
        if initial.type == StateType.PENDING and proposed.name not in (initial.name, "Pending"):
            for carried in ("scheduled_time", "deployment_concurrency_lease_id"):
                proposed.state_details[carried] = initial.state_details.get(carried)
            return
        transition.abort(
            f"This run is in a {initial.type} state and cannot transition to a PENDING state."
        )


class CopyScheduledTime(Rule):
    """A PENDING state after a SCHEDULED one keeps its scheduled time unless it names one."""

    from_types = frozenset({StateType.SCHEDULED})
    to_types = frozenset({StateType.PENDING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        _copy_missing_detail(transition, "scheduled_time")


class CopyTaskParametersID(Rule):
    """A background run keeps its stored parameters' id from SCHEDULED to PENDING to RUNNING."""

    from_types = frozenset({StateType.SCHEDULED, StateType.PENDING})
    to_types = frozenset({StateType.PENDING, StateType.RUNNING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        _copy_missing_detail(transition, "task_parameters_id")


def _copy_missing_detail(transition: Transition, name: str) -> None:
    proposed = transition.proposal
    if not proposed.state_details.get(name):
        proposed.state_details[name] = transition.current.state_details.get(name)


class WaitForScheduledTime(Rule):
    """A run cannot start before its scheduled time: the client is told to wait."""

    from_types = frozenset({StateType.SCHEDULED, StateType.PENDING})
    to_types = frozenset({StateType.RUNNING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        scheduled_time = scheduled_time_of(transition.current)
        if scheduled_time is None:
            return
        delay_seconds = whole_seconds(scheduled_time - transition.now)
        if delay_seconds > 0:
            transition.wait("Scheduled time is in the future", delay_seconds=delay_seconds)


def whole_seconds(delay: timedelta) -> int:
    """The delay in whole seconds: its seconds, plus one when the fraction is over a half."""
    return math.floor(delay.total_seconds()) + round(delay.microseconds / 1_000_000)


class RetryFailedTasks(Rule):
    """A run that fails while RUNNING with retries left is scheduled again ("AwaitingRetry"),
    after its retry delay, unless the failure says it is not retriable.
    """

    from_types = frozenset({StateType.RUNNING})
    to_types = frozenset({StateType.FAILED})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        proposed, run = transition.proposal, transition.run
        retries = run.empirical_policy.get("retries")
        if proposed.state_details.get("retriable") is False:
            return
        if retries is None or run.run_count > retries:
            return
        delay = retry_delay_seconds(run.empirical_policy, run_count=run.run_count)
        awaiting_retry = state_row(
            task_run=run,
            state_type=StateType.SCHEDULED,
            name="AwaitingRetry",
            message=proposed.message,
            data=proposed.data,
            details=models.StateDetails(scheduled_time=_later(transition.now, seconds=delay)),
            now=proposed.timestamp,
        )
        transition.reject("Retrying", replacement=awaiting_retry)


def retry_delay_seconds(
    policy: dict[str, Any], *, run_count: int, draw: Callable[[], float] = random.random
) -> float:
    """The delay before the next try: the run's entry in a list of delays (the last one once
    the list is used up) or the one delay, jittered when the policy has a jitter factor.
    """
    delays = policy.get("retry_delay")
    if isinstance(delays, list):
        given = delays[min(run_count - 1, len(delays) - 1)] if delays else 0
    else:
        given = delays or 0
    delay = _within_timedelta_range(given)
    jitter = policy.get("retry_jitter_factor")
    if jitter and delay > 0:
        return jittered_delay(delay, jitter_factor=jitter, draw=draw)
    return delay


# The longest delay a timedelta holds; a longer one schedules the retry at the latest instant.
LONGEST_DELAY_SECONDS = timedelta.max.total_seconds()


def _within_timedelta_range(seconds: float) -> float:
    """`seconds` as a float, brought within what a timedelta holds: a JSON number may be an
    integer too big for a float, which no float arithmetic takes.
    """
    return float(max(-LONGEST_DELAY_SECONDS, min(seconds, LONGEST_DELAY_SECONDS)))


def jittered_delay(
    delay: float, *, jitter_factor: float, draw: Callable[[], float] = random.random
) -> float:
    """A random delay around `delay`: an exponential variate with that mean, kept between an
    upper bound of `delay * (1 + jitter_factor)` and a lower bound chosen so that the variate
    is as likely to fall below the median as above it.
    """
    upper_multiple = 1 + jitter_factor
    # For large multiples the lower bound is indistinguishable from 0 (and 2**k overflows).
    lower_multiple = (
        math.log2(2**upper_multiple / (2**upper_multiple - 1)) if upper_multiple < 50 else 0.0
    )
    low = _exponential_cdf(delay * lower_multiple, mean=delay)
    high = _exponential_cdf(delay * upper_multiple, mean=delay)
    quantile = low + (high - low) * draw()
    return -math.log(max(1 - quantile, 1e-10)) * delay


def _exponential_cdf(x: float, *, mean: float) -> float:
    return 1 - math.exp(-x / mean)


def _later(moment: datetime, *, seconds: float) -> datetime:
    """`moment` plus `seconds`, the nearest representable instant when that is out of range."""
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return LATEST if seconds > 0 else EARLIEST


class RenameReruns(Rule):
    """A run that starts again is named "Retrying" after "AwaitingRetry", else "Rerunning"."""

    from_types = ANY_STATE
    to_types = frozenset({StateType.RUNNING})

    def before(self, transition: Transition, store: OrchestrationStore) -> None:  # noqa: ARG002
        if transition.initial is None or transition.run.run_count == 0:
            return
        if transition.initial.name == "AwaitingRetry":
            transition.rename("Retrying")
        else:
            transition.rename("Rerunning")


class EnqueueScheduledTasks(Rule):
    """A background task's run, once SCHEDULED, waits on the queue of its task key for a task
    worker; one scheduled again after a failure ("AwaitingRetry") goes first.
    """

    from_types = ANY_STATE
    to_types = frozenset({StateType.SCHEDULED})

    def acts_after(self, transition: Transition) -> bool:
        return bool(transition.proposal.state_details.get("deferred"))

    def after(self, transition: Transition, store: OrchestrationStore) -> None:
        if self.acts_after(transition):
            written = transition.proposal
            store.enqueue(transition.run, retry=written.name == "AwaitingRetry")


class CacheInsertion(Rule):
    """A COMPLETED state with a cache key is cached under it once written."""

    from_types = ANY_STATE
    to_types = frozenset({StateType.COMPLETED})

    def acts_after(self, transition: Transition) -> bool:
        return bool(transition.proposal.state_details.get("cache_key"))

    def after(self, transition: Transition, store: OrchestrationStore) -> None:
        if self.acts_after(transition):
            store.cache(transition.proposal)

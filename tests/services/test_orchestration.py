"""The orchestration rules, the policies and the engine, on plain records: no database."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

import pytest

from app.db.records import TaskRunRecord, TaskRunStateRecord
from app.services.clock import EARLIEST, LATEST
from app.services.orchestration import rules
from app.services.orchestration.policies import (
    BACKGROUND_TASK_POLICY,
    CORE_TASK_POLICY,
    MINIMAL_TASK_POLICY,
    Orchestration,
    Policy,
    select_policy,
)
from app.services.orchestration.transition import Transition, TransitionError
from app.services.states import enter_state, state_row
from generated import models
from tests.support.records import START, fresh_run

StateType = models.StateType
NOW = START + timedelta(hours=1)
# A timestamp ahead of the server's clock: the run's current state was stamped by a client's.
AHEAD = NOW + timedelta(hours=1)


class MemoryStore:
    """The OrchestrationStore of a test: cache entries (key, expiration, state), newest last,
    and the runs enqueued (id, retry).
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, datetime | None, TaskRunStateRecord]] = []
        self.enqueued: list[tuple[UUID, bool]] = []

    def enqueue(self, run: TaskRunRecord, *, retry: bool) -> None:
        self.enqueued.append((run.id, retry))

    def cached_state(self, cache_key: str, *, now: datetime) -> TaskRunStateRecord | None:
        usable = [
            state
            for key, expiration, state in self.entries
            if key == cache_key and (expiration is None or expiration > now)
        ]
        return usable[-1] if usable else None

    def cache(self, state: TaskRunStateRecord) -> None:
        expiration = state.state_details.get("cache_expiration")
        self.entries.append(
            (
                state.state_details["cache_key"],
                datetime.fromisoformat(expiration) if expiration else None,
                state,
            )
        )


def state(
    run: TaskRunRecord,
    state_type: str,
    *,
    at: datetime = START,
    name: str | None = None,
    data: Any = None,
    **details: Any,
) -> TaskRunStateRecord:
    return state_row(
        task_run=run,
        state_type=StateType(state_type),
        name=name,
        message=None,
        data=data,
        details=models.StateDetails.model_validate(details),
        now=at,
    )


def run_in(state_type: str | None, *, run_count: int = 0, **policy: Any) -> TaskRunRecord:
    """A run whose current state is a new state of `state_type` (none for None)."""
    run = fresh_run()
    run.empirical_policy = {"retries": None, "retry_delay": None, **policy}
    if state_type is not None:
        enter_state(run, state(run, state_type))
    run.run_count = run_count
    return run


def transition(
    run: TaskRunRecord,
    current: TaskRunStateRecord | None,
    proposed: str,
    *,
    at: datetime = NOW,
    **state_fields: Any,
) -> Transition:
    """A proposal stamped `at`, decided when the server's clock reads NOW."""
    return Transition(
        run=run, initial=current, proposed=state(run, proposed, at=at, **state_fields), now=NOW
    )


def decide(rule: type[rules.Rule], tr: Transition, cache: MemoryStore | None = None) -> Transition:
    """Apply one rule the way a policy would, including its after-write step."""
    orchestration = Orchestration(Policy("one", (rule,)), tr, cache or MemoryStore())
    orchestration.decide()
    if tr.proposed is not None:
        orchestration.written()
    return tr


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def outcome(tr: Transition) -> tuple[str, str | None, str | None]:
    return (
        tr.status.value,
        tr.proposed.type if tr.proposed else None,
        tr.proposed.name if tr.proposed else None,
    )


def current_of(run: TaskRunRecord, state_type: str, **fields: Any) -> TaskRunStateRecord:
    current = state(run, state_type, **fields)
    enter_state(run, current)
    return current


class TestPolicySelection:
    @pytest.mark.parametrize(
        ("deferred", "force", "policy"),
        [
            (False, False, CORE_TASK_POLICY),
            (False, True, MINIMAL_TASK_POLICY),
            (True, False, BACKGROUND_TASK_POLICY),
            (True, True, BACKGROUND_TASK_POLICY),
        ],
    )
    def test_deferred_wins_then_force(self, deferred: bool, force: bool, policy: Policy) -> None:
        assert select_policy(deferred=deferred, force=force) is policy

    def test_the_policies_list_prefects_rules_in_order(self) -> None:
        assert [rule.__name__ for rule in CORE_TASK_POLICY.rules] == [
            "CacheRetrieval",
            "HandleTaskTerminalStateTransitions",
            "CopyScheduledTime",
            "WaitForScheduledTime",
            "RetryFailedTasks",
            "RenameReruns",
            "CacheInsertion",
        ]
        assert [rule.__name__ for rule in BACKGROUND_TASK_POLICY.rules] == [
            "PreventPendingTransitions",
            "CacheRetrieval",
            "HandleTaskTerminalStateTransitions",
            "CopyScheduledTime",
            "CopyTaskParametersID",
            "WaitForScheduledTime",
            "RetryFailedTasks",
            "RenameReruns",
            "CacheInsertion",
            "EnqueueScheduledTasks",
        ]
        assert MINIMAL_TASK_POLICY.rules == ()


class TestGoverns:
    @pytest.mark.parametrize(
        ("rule", "governed", "not_governed"),
        [
            (rules.CacheRetrieval, (None, "RUNNING"), ("PENDING", "COMPLETED")),
            (rules.HandleTaskTerminalStateTransitions, ("FAILED", "PAUSED"), ("PAUSED", "FAILED")),
            (rules.PreventPendingTransitions, ("CANCELLED", "PENDING"), ("SCHEDULED", "PENDING")),
            (rules.CopyScheduledTime, ("SCHEDULED", "PENDING"), ("PENDING", "PENDING")),
            (rules.CopyTaskParametersID, ("PENDING", "RUNNING"), ("RUNNING", "RUNNING")),
            (rules.WaitForScheduledTime, ("PENDING", "RUNNING"), ("PAUSED", "RUNNING")),
            (rules.RetryFailedTasks, ("RUNNING", "FAILED"), ("PENDING", "FAILED")),
            (rules.RenameReruns, ("COMPLETED", "RUNNING"), ("RUNNING", "PENDING")),
            (rules.CacheInsertion, (None, "COMPLETED"), ("RUNNING", "FAILED")),
            (rules.EnqueueScheduledTasks, (None, "SCHEDULED"), ("SCHEDULED", "PENDING")),
        ],
    )  # fmt: skip
    def test_each_rule_names_its_transitions(
        self,
        rule: type[rules.Rule],
        governed: tuple[str | None, str],
        not_governed: tuple[str | None, str],
    ) -> None:
        def types(pair: tuple[str | None, str]) -> tuple[StateType | None, StateType]:
            return (StateType(pair[0]) if pair[0] else None, StateType(pair[1]))

        assert rule.governs(*types(governed))
        assert not rule.governs(*types(not_governed))


class TestCacheRetrieval:
    def test_replaces_running_with_a_copy_of_the_cached_state(self) -> None:
        cache = MemoryStore()
        source = fresh_run()
        cached = state(source, "COMPLETED", data={"r": 1}, cache_key="k")
        cache.cache(cached)
        run = run_in("PENDING")

        tr = decide(rules.CacheRetrieval, transition(run, None, "RUNNING", cache_key="k"), cache)

        assert outcome(tr) == ("REJECT", "COMPLETED", "Cached")
        assert tr.details == models.StateRejectDetails(reason="Retrieved state from cache")
        assert tr.proposal.data == {"r": 1}
        assert tr.proposal.id != cached.id
        assert tr.proposal.timestamp == NOW
        assert tr.proposal.state_details["task_run_id"] == str(run.id)

    @pytest.mark.parametrize(
        "details", [{"cache_key": "k", "refresh_cache": True}, {"cache_key": "other"}, {}]
    )
    def test_accepts_when_the_cache_has_nothing_to_give(self, details: dict[str, Any]) -> None:
        cache = MemoryStore()
        cache.cache(state(fresh_run(), "COMPLETED", cache_key="k"))
        run = run_in("PENDING")

        tr = decide(rules.CacheRetrieval, transition(run, None, "RUNNING", **details), cache)

        assert outcome(tr) == ("ACCEPT", "RUNNING", "Running")

    def test_an_expired_entry_is_not_used(self) -> None:
        cache = MemoryStore()
        cache.cache(state(fresh_run(), "COMPLETED", cache_key="k", cache_expiration=NOW))

        tr = decide(
            rules.CacheRetrieval, transition(run_in(None), None, "RUNNING", cache_key="k"), cache
        )

        assert outcome(tr) == ("ACCEPT", "RUNNING", "Running")

    def test_expiry_is_read_on_the_servers_clock_and_the_copy_stamped_as_the_proposal(
        self,
    ) -> None:
        cache = MemoryStore()
        expiration = NOW + timedelta(minutes=1)
        cache.cache(state(fresh_run(), "COMPLETED", cache_key="k", cache_expiration=expiration))

        tr = decide(
            rules.CacheRetrieval,
            transition(run_in(None), None, "RUNNING", at=AHEAD, cache_key="k"),
            cache,
        )

        assert outcome(tr) == ("REJECT", "COMPLETED", "Cached")
        assert tr.proposal.timestamp == AHEAD


class TestCacheInsertion:
    def test_caches_the_written_state(self) -> None:
        cache = MemoryStore()
        run = run_in("RUNNING")

        tr = decide(rules.CacheInsertion, transition(run, None, "COMPLETED", cache_key="k"), cache)

        assert [(key, s.id) for key, _, s in cache.entries] == [("k", tr.proposal.id)]

    def test_nothing_without_a_key(self) -> None:
        cache = MemoryStore()

        decide(rules.CacheInsertion, transition(run_in("RUNNING"), None, "COMPLETED"), cache)

        assert cache.entries == []


class TestEnqueueScheduledTasks:
    @pytest.mark.parametrize(
        ("name", "deferred", "expected"),
        [(None, True, [False]), ("AwaitingRetry", True, [True]), (None, False, [])],
    )
    def test_queues_a_scheduled_background_run(
        self, name: str | None, deferred: bool, expected: list[bool]
    ) -> None:
        store = MemoryStore()
        run = run_in("RUNNING")

        tr = decide(
            rules.EnqueueScheduledTasks,
            transition(run, None, "SCHEDULED", name=name, deferred=deferred),
            store,
        )

        assert store.enqueued == [(run.id, retry) for retry in expected]
        assert outcome(tr)[0] == "ACCEPT"


class TestHandleTaskTerminalStateTransitions:
    @pytest.mark.parametrize("proposed", ["CANCELLING", "PAUSED", "CRASHED"])
    def test_aborts_what_a_finished_run_cannot_become(self, proposed: str) -> None:
        run = run_in(None)
        current = current_of(run, "FAILED")

        tr = decide(rules.HandleTaskTerminalStateTransitions, transition(run, current, proposed))

        assert outcome(tr) == ("ABORT", None, None)
        assert tr.details == models.StateAbortDetails(reason="Run is already FAILED.")

    def test_rejects_leaving_a_persisted_result(self) -> None:
        run = run_in(None)
        current = current_of(run, "COMPLETED", data={"storage_key": "x"})

        tr = decide(rules.HandleTaskTerminalStateTransitions, transition(run, current, "RUNNING"))

        assert outcome(tr) == ("REJECT", None, None)
        assert tr.details == models.StateRejectDetails(reason="This run is already completed.")

    @pytest.mark.parametrize("data", [None, {"type": "unpersisted"}, {}, 0])
    def test_resets_the_count_when_leaving_for_a_state_that_is_not_final(self, data: Any) -> None:
        run = run_in(None)
        current = current_of(run, "COMPLETED", data=data)
        run.run_count = 3

        tr = decide(rules.HandleTaskTerminalStateTransitions, transition(run, current, "PENDING"))

        assert outcome(tr) == ("ACCEPT", "PENDING", "Pending")
        assert run.run_count == 0

    def test_keeps_the_count_for_another_final_state(self) -> None:
        run = run_in(None)
        current = current_of(run, "CRASHED")
        run.run_count = 3

        decide(rules.HandleTaskTerminalStateTransitions, transition(run, current, "FAILED"))

        assert run.run_count == 3


class TestPreventPendingTransitions:
    @pytest.mark.parametrize("current_type", ["RUNNING", "CANCELLING", "CANCELLED"])
    def test_aborts_a_return_to_pending(self, current_type: str) -> None:
        run = run_in(None)
        current = current_of(run, current_type)

        tr = decide(rules.PreventPendingTransitions, transition(run, current, "PENDING"))

        assert outcome(tr) == ("ABORT", None, None)

    @pytest.mark.parametrize(("name", "allowed"), [("Submitting", True), ("Pending", False)])
    def test_pending_may_only_move_to_another_name(self, name: str, allowed: bool) -> None:
        run = run_in(None)
        current = current_of(run, "PENDING", name="Queued", scheduled_time=START)

        tr = decide(rules.PreventPendingTransitions, transition(run, current, "PENDING", name=name))

        if allowed:
            assert outcome(tr) == ("ACCEPT", "PENDING", name)
            assert when(tr.proposal.state_details["scheduled_time"]) == START
        else:
            assert outcome(tr) == ("ABORT", None, None)


class TestCopyingDetails:
    def test_scheduled_time_is_copied_only_when_missing(self) -> None:
        run = run_in(None)
        current = current_of(run, "SCHEDULED", scheduled_time=START)
        own_time = START + timedelta(minutes=5)

        copied = decide(rules.CopyScheduledTime, transition(run, current, "PENDING"))
        kept = decide(
            rules.CopyScheduledTime, transition(run, current, "PENDING", scheduled_time=own_time)
        )

        assert when(copied.proposal.state_details["scheduled_time"]) == START
        assert when(kept.proposal.state_details["scheduled_time"]) == own_time

    def test_the_parameters_id_is_copied_only_when_missing(self) -> None:
        run = run_in(None)
        current = current_of(run, "PENDING", task_parameters_id=run.id)

        copied = decide(rules.CopyTaskParametersID, transition(run, current, "RUNNING"))

        assert copied.proposal.state_details["task_parameters_id"] == str(run.id)


class TestWaitForScheduledTime:
    @pytest.mark.parametrize(
        ("seconds_ahead", "delay"), [(100, 100), (99.6, 100), (99.4, 99), (0.4, None), (-10, None)]
    )
    def test_waits_whole_seconds_until_the_scheduled_time(
        self, seconds_ahead: float, delay: int | None
    ) -> None:
        run = run_in(None)
        current = current_of(
            run, "SCHEDULED", scheduled_time=NOW + timedelta(seconds=seconds_ahead)
        )

        tr = decide(rules.WaitForScheduledTime, transition(run, current, "RUNNING"))

        if delay is None:
            assert outcome(tr) == ("ACCEPT", "RUNNING", "Running")
        else:
            assert outcome(tr) == ("WAIT", None, None)
            assert tr.details == models.StateWaitDetails(
                delay_seconds=delay, reason="Scheduled time is in the future"
            )

    def test_the_wait_is_measured_on_the_servers_clock(self) -> None:
        run = run_in(None)
        current = current_of(run, "SCHEDULED", scheduled_time=NOW + timedelta(seconds=100))

        tr = decide(rules.WaitForScheduledTime, transition(run, current, "RUNNING", at=AHEAD))

        assert outcome(tr) == ("WAIT", None, None)
        assert tr.details == models.StateWaitDetails(
            delay_seconds=100, reason="Scheduled time is in the future"
        )

    def test_no_scheduled_time_no_wait(self) -> None:
        run = run_in(None)
        current = current_of(run, "PENDING")

        tr = decide(rules.WaitForScheduledTime, transition(run, current, "RUNNING"))

        assert outcome(tr) == ("ACCEPT", "RUNNING", "Running")


class TestRetryFailedTasks:
    def test_schedules_a_retry_while_retries_are_left(self) -> None:
        run = run_in(None, retries=2, retry_delay=10)
        current = current_of(run, "RUNNING")

        tr = transition(run, current, "FAILED", data={"e": 1})
        tr.proposal.message = "boom"
        decide(rules.RetryFailedTasks, tr)

        assert outcome(tr) == ("REJECT", "SCHEDULED", "AwaitingRetry")
        assert (tr.proposal.message, tr.proposal.data) == ("boom", {"e": 1})
        assert when(tr.proposal.state_details["scheduled_time"]) == NOW + timedelta(seconds=10)

    def test_the_retry_is_due_by_the_servers_clock_and_stamped_as_the_proposal(self) -> None:
        run = run_in(None, retries=2, retry_delay=10)
        current = current_of(run, "RUNNING")

        tr = decide(rules.RetryFailedTasks, transition(run, current, "FAILED", at=AHEAD))

        assert outcome(tr) == ("REJECT", "SCHEDULED", "AwaitingRetry")
        assert tr.proposal.timestamp == AHEAD
        assert when(tr.proposal.state_details["scheduled_time"]) == NOW + timedelta(seconds=10)

    @pytest.mark.parametrize(
        ("retry_delay", "due"),
        [(10**400, LATEST), ([10**400], LATEST), (-(10**400), EARLIEST)],
        ids=["number", "list", "negative"],
    )
    def test_a_delay_beyond_a_float_schedules_at_the_nearest_bound(
        self, retry_delay: Any, due: datetime
    ) -> None:
        run = run_in(None, retries=2, retry_delay=retry_delay)
        current = current_of(run, "RUNNING")

        tr = decide(rules.RetryFailedTasks, transition(run, current, "FAILED"))

        assert outcome(tr) == ("REJECT", "SCHEDULED", "AwaitingRetry")
        assert when(tr.proposal.state_details["scheduled_time"]) == due

    @pytest.mark.parametrize(
        ("policy", "run_count", "details"),
        [
            ({"retries": 2}, 3, {}),
            ({"retries": None}, 1, {}),
            ({"retries": 2}, 1, {"retriable": False}),
        ],
    )
    def test_lets_the_failure_stand(
        self, policy: dict[str, Any], run_count: int, details: dict[str, Any]
    ) -> None:
        run = run_in(None, **policy)
        current = current_of(run, "RUNNING")
        run.run_count = run_count

        tr = decide(rules.RetryFailedTasks, transition(run, current, "FAILED", **details))

        assert outcome(tr) == ("ACCEPT", "FAILED", "Failed")

    @pytest.mark.parametrize(
        ("delays", "run_count", "expected"),
        [
            ([1, 2, 3], 1, 1),
            ([1, 2, 3], 2, 2),
            ([1, 2, 3], 9, 3),
            ([], 1, 0),
            (4.5, 3, 4.5),
            (None, 1, 0),
        ],
    )
    def test_the_delay_of_each_try(self, delays: Any, run_count: int, expected: float) -> None:
        assert rules.retry_delay_seconds({"retry_delay": delays}, run_count=run_count) == expected

    @pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
    def test_jitter_keeps_the_delay_within_its_bounds(self, draw: float) -> None:
        delay = rules.retry_delay_seconds(
            {"retry_delay": 10, "retry_jitter_factor": 0.5}, run_count=1, draw=lambda: draw
        )

        # Upper bound 10 * 1.5; lower bound 10 * log2(2**1.5 / (2**1.5 - 1)) ≈ 6.3.
        assert 6.29 <= delay <= 15.0 + 1e-9
        if draw == 1.0:
            assert delay == pytest.approx(15.0)

    @pytest.mark.parametrize(
        ("delay", "expected"),
        [
            (10**400, rules.LONGEST_DELAY_SECONDS),
            (-(10**400), -rules.LONGEST_DELAY_SECONDS),
            (1e300, rules.LONGEST_DELAY_SECONDS),
        ],
        ids=["integer", "negative-integer", "float"],
    )
    def test_a_delay_is_kept_within_a_timedeltas_range(self, delay: Any, expected: float) -> None:
        assert rules.retry_delay_seconds({"retry_delay": delay}, run_count=1) == expected

    def test_jitter_takes_a_delay_beyond_a_float(self) -> None:
        policy = {"retry_delay": 10**400, "retry_jitter_factor": 0.5}

        delay = rules.retry_delay_seconds(policy, run_count=1, draw=lambda: 1.0)

        assert delay == pytest.approx(rules.LONGEST_DELAY_SECONDS * 1.5)

    def test_no_jitter_on_a_zero_delay(self) -> None:
        policy = {"retry_delay": 0, "retry_jitter_factor": 2.0}

        assert rules.retry_delay_seconds(policy, run_count=1, draw=lambda: 0.9) == 0


class TestRenameReruns:
    @pytest.mark.parametrize(
        ("current_name", "run_count", "expected"),
        [("AwaitingRetry", 1, "Retrying"), ("Running", 1, "Rerunning"), ("Pending", 0, "Running")],
    )
    def test_names_a_rerun(self, current_name: str, run_count: int, expected: str) -> None:
        run = run_in(None)
        current = current_of(run, "SCHEDULED", name=current_name)
        run.run_count = run_count

        tr = decide(rules.RenameReruns, transition(run, current, "RUNNING"))

        assert outcome(tr) == ("ACCEPT", "RUNNING", expected)


class TestOrchestration:
    """The engine: order, rules skipped once the transition changed, undo, after the write."""

    class Journal:
        events: ClassVar[list[str]] = []

    def recording(self, label: str, effect: str = "") -> type[rules.Rule]:
        journal = self.Journal.events

        class Recording(rules.Rule):
            from_types = rules.ANY_STATE
            to_types = rules.ANY_TYPE

            def before(self, tr: Transition, cache: Any) -> None:  # noqa: ARG002
                journal.append(f"{label}.before")
                if effect == "count":
                    tr.run.run_count += 10
                elif effect == "reject":
                    tr.reject("replaced", replacement=state(tr.run, "FAILED", at=tr.now))
                elif effect == "abort":
                    tr.abort("no")

            def after(self, tr: Transition, cache: Any) -> None:  # noqa: ARG002
                journal.append(f"{label}.after")

            def undo(self, tr: Transition) -> None:
                journal.append(f"{label}.undo")
                if effect == "count":
                    tr.run.run_count -= 10

        return Recording

    def run_policy(self, *policy_rules: type[rules.Rule]) -> Transition:
        self.Journal.events.clear()
        run = run_in("PENDING")
        tr = transition(run, None, "RUNNING")
        orchestration = Orchestration(Policy("test", policy_rules), tr, MemoryStore())
        orchestration.decide()
        if tr.proposed is not None:
            orchestration.written()
        return tr

    def test_rules_decide_in_order_and_act_after_the_write_in_reverse(self) -> None:
        self.run_policy(self.recording("a"), self.recording("b"))

        assert self.Journal.events == ["a.before", "b.before", "b.after", "a.after"]

    def test_a_replaced_transition_skips_the_later_rules_and_undoes_the_earlier(self) -> None:
        tr = self.run_policy(
            self.recording("a", "count"), self.recording("b", "reject"), self.recording("c")
        )

        assert self.Journal.events == ["a.before", "b.before", "a.undo", "b.after"]
        assert outcome(tr) == ("REJECT", "FAILED", "Failed")
        assert tr.run.run_count == 0

    def test_nothing_written_means_no_after(self) -> None:
        tr = self.run_policy(self.recording("a"), self.recording("b", "abort"))

        assert self.Journal.events == ["a.before", "b.before", "a.undo"]
        assert outcome(tr) == ("ABORT", None, None)

    def test_a_rule_reading_a_missing_state_fails_loudly(self) -> None:
        tr = transition(run_in(None), None, "RUNNING")

        with pytest.raises(TransitionError, match="no state yet"):
            _ = tr.current

"""Policies: which rules decide a proposal, in which order, and how they are applied."""

from __future__ import annotations

from dataclasses import dataclass

from app.services.orchestration.rules import (
    CacheInsertion,
    CacheRetrieval,
    CopyScheduledTime,
    CopyTaskParametersID,
    EnqueueScheduledTasks,
    HandleTaskTerminalStateTransitions,
    PreventPendingTransitions,
    RenameReruns,
    RetryFailedTasks,
    Rule,
    WaitForScheduledTime,
)
from app.services.orchestration.transition import OrchestrationStore, StateType, Transition


@dataclass(frozen=True)
class Policy:
    """An ordered list of rules; the first ones decide first."""

    name: str
    rules: tuple[type[Rule], ...]


# The rules of an ordinary (unforced) proposal.
CORE_TASK_POLICY = Policy(
    "core",
    (
        CacheRetrieval,
        HandleTaskTerminalStateTransitions,
        CopyScheduledTime,
        WaitForScheduledTime,
        RetryFailedTasks,
        RenameReruns,
        CacheInsertion,
    ),
)
# The rules of a proposal for a background task (its state is `deferred`), forced or not.
BACKGROUND_TASK_POLICY = Policy(
    "background",
    (
        PreventPendingTransitions,
        CacheRetrieval,
        HandleTaskTerminalStateTransitions,
        CopyScheduledTime,
        CopyTaskParametersID,
        WaitForScheduledTime,
        RetryFailedTasks,
        RenameReruns,
        CacheInsertion,
        EnqueueScheduledTasks,
    ),
)
# A forced proposal is written as it is.
MINIMAL_TASK_POLICY = Policy("minimal", ())


def select_policy(*, deferred: bool, force: bool) -> Policy:
    """The policy of a proposal: a deferred state wins over `force`, as in Prefect."""
    if deferred:
        return BACKGROUND_TASK_POLICY
    if force:
        return MINIMAL_TASK_POLICY
    return CORE_TASK_POLICY


class Orchestration:
    """A policy applied to one transition: `decide` before the write, `written` after it.

    Rules run in the policy's order, each only if it governs the transition as proposed and
    no rule before it has changed the proposed type (a renamed state is still the same
    transition). When a later rule changes the transition, the earlier ones undo their
    changes to the run before the bookkeeping; after the write, the rules whose transition
    stands act on the written state.
    """

    def __init__(self, policy: Policy, transition: Transition, store: OrchestrationStore) -> None:
        self.policy = policy
        self.transition = transition
        self.store = store
        # Each rule that decided, with the state type it let through.
        self._decided: list[tuple[Rule, StateType | None]] = []

    def decide(self) -> None:
        """Let the rules decide; `transition.proposed` is then what is to be written."""
        transition = self.transition
        intended = transition.proposed_type
        for rule_type in self.policy.rules:
            still_intended = transition.proposed_type == intended
            if not (still_intended and rule_type.governs(transition.initial_type, intended)):
                continue
            rule = rule_type()
            rule.before(transition, self.store)
            self._decided.append((rule, transition.proposed_type))
        for rule, let_through in reversed(self._decided):
            if transition.proposed_type != let_through:
                rule.undo(transition)

    def acts_after_write(self) -> bool:
        """Whether `written` would change data once the decided state is written: if so, the
        write and `written` belong in one transaction.
        """
        return any(rule.acts_after(self.transition) for rule in self._acting_after_write())

    def written(self) -> None:
        """Let the rules act on the written state (`transition.proposed`)."""
        for rule in self._acting_after_write():
            rule.after(self.transition, self.store)

    def _acting_after_write(self) -> list[Rule]:
        """The rules that let through the state to be written, the last to decide first."""
        written_type = self.transition.proposed_type
        if written_type is None:
            return []
        decided = reversed(self._decided)
        return [rule for rule, let_through in decided if let_through == written_type]

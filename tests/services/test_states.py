"""The bookkeeping a run gets on entering a state (Prefect's global orchestration rules)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

from app.db.records import TaskRunRecord, TaskRunStateRecord
from app.services.clock import LATEST
from app.services.states import enter_state, new_state_row, next_state_time
from generated import models
from tests.support.records import START, fresh_run


def enter(
    run: TaskRunRecord, state_type: str, at: datetime, **details: object
) -> TaskRunStateRecord:
    proposed = models.StateCreate(
        type=models.StateType(state_type),
        state_details=models.StateDetails.model_validate(details),
    )
    state = new_state_row(task_run=run, proposed=proposed, now=at)
    enter_state(run, state)
    return state


def test_running_then_completed_counts_run_time() -> None:
    run = fresh_run()
    enter(run, "PENDING", START)
    enter(run, "RUNNING", START + timedelta(seconds=1))
    enter(run, "COMPLETED", START + timedelta(seconds=3.5))

    assert run.run_count == 1
    assert run.total_run_time == 2.5
    assert run.start_time == START + timedelta(seconds=1)
    assert run.end_time == START + timedelta(seconds=3.5)
    assert run.expected_start_time == START


def test_rerunning_a_finished_run_clears_its_end_and_counts_again() -> None:
    run = fresh_run()
    enter(run, "RUNNING", START)
    enter(run, "FAILED", START + timedelta(seconds=1))
    enter(run, "RUNNING", START + timedelta(seconds=2))
    enter(run, "RUNNING", START + timedelta(seconds=4))

    assert run.end_time is None
    assert run.start_time == START
    assert run.run_count == 3
    assert run.total_run_time == 3.0


def test_a_second_terminal_state_keeps_the_first_end_time() -> None:
    run = fresh_run()
    enter(run, "COMPLETED", START)
    enter(run, "FAILED", START + timedelta(seconds=1))

    assert run.end_time == START


def test_leaving_scheduled_clears_the_next_scheduled_start() -> None:
    run = fresh_run()
    due = START + timedelta(hours=1)
    enter(run, "SCHEDULED", START, scheduled_time=due)

    assert run.next_scheduled_start_time == run.expected_start_time == due

    state = enter(run, "PENDING", START + timedelta(hours=2))

    assert run.next_scheduled_start_time is None
    assert run.expected_start_time == due
    assert run.state_id == state.id
    assert (run.state_type, run.state_name) == ("PENDING", "Pending")


@pytest.mark.parametrize("flow_run_id", [None, uuid4()])
def test_state_details_carry_the_runs_ids(flow_run_id: UUID | None) -> None:
    run = fresh_run()
    run.flow_run_id = flow_run_id

    state = enter(run, "PENDING", START, task_run_id=uuid4(), flow_run_id=uuid4())

    assert state.state_details["task_run_id"] == str(run.id)
    assert state.state_details["flow_run_id"] == (str(flow_run_id) if flow_run_id else None)


def test_the_next_state_is_stamped_now_after_an_earlier_one() -> None:
    current = enter(fresh_run(), "RUNNING", START)
    now = START + timedelta(seconds=1)

    assert next_state_time(current, now=now) == now
    assert next_state_time(None, now=now) == now


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(hours=1)])
def test_the_next_state_is_stamped_just_after_a_current_one_not_behind_the_clock(
    ahead: timedelta,
) -> None:
    current = enter(fresh_run(), "RUNNING", START + ahead)

    assert next_state_time(current, now=START) == START + ahead + timedelta(microseconds=1)


def test_after_a_state_at_the_latest_instant_the_next_one_is_there_too() -> None:
    current = enter(fresh_run(), "RUNNING", LATEST)

    assert next_state_time(current, now=START) == LATEST

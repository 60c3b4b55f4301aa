"""Handlers of the Task Runs operations."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from app.db.database import Database
from app.observability import metrics
from app.services import task_run_queries, task_run_states, task_runs
from generated import models
from generated.routes import Serialized


class TaskRunHandlers:
    """The task-run operations of openapi.yaml (tag "Task Runs")."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    def create_task_run(
        self, *, body: models.TaskRunCreate
    ) -> tuple[models.TaskRun, Literal[200, 201]]:
        """Create a task run: 201 when this request inserted it, 200 when it already existed."""
        outcome = self._database.write(
            lambda connection: task_runs.create_task_run(connection=connection, task_run=body),
            one_statement=task_runs.creates_in_one_statement(body),
        )
        return outcome.task_run, 201 if outcome.created else 200

    def read_task_run(self, *, id: UUID) -> tuple[Serialized[models.TaskRun], Literal[200]]:
        """Read a task run by id."""
        with self._database.snapshot() as connection:
            run = task_run_queries.read_task_run(connection=connection, task_run_id=id)
        return Serialized(run), 200

    def update_task_run(self, *, id: UUID, body: models.TaskRunUpdate) -> tuple[None, Literal[204]]:
        """Rename a task run."""
        self._database.write(
            lambda connection: task_runs.rename_task_run(
                connection=connection, task_run_id=id, update=body
            ),
            one_statement=True,
        )
        return None, 204

    def delete_task_run(self, *, id: UUID) -> tuple[None, Literal[204]]:
        """Delete a task run with its states."""
        self._database.write(
            lambda connection: task_runs.delete_task_run(connection=connection, task_run_id=id),
            one_statement=True,
        )
        return None, 204

    def set_task_run_state(
        self, *, id: UUID, body: models.SetTaskRunStateBody
    ) -> tuple[models.OrchestrationResult, Literal[200, 201]]:
        """Propose a state: 201 when a state was written, 200 when none was."""
        outcome = task_run_states.propose_state(
            self._database, task_run_id=id, proposed=body.state, force=body.force
        )
        metrics.count_orchestration(outcome.transition.status.value)
        return outcome.result, 201 if outcome.written else 200

    def read_task_runs(
        self, *, body: models.ReadTaskRunsBody | None = None
    ) -> tuple[Serialized[list[models.TaskRun]], Literal[200]]:
        """The task runs that match the filters, in order."""
        with self._database.snapshot() as connection:
            runs = task_run_queries.read_task_runs(connection=connection, body=body)
        return Serialized(runs), 200

    def count_task_runs(
        self, *, body: models.CountTaskRunsBody | None = None
    ) -> tuple[int, Literal[200]]:
        """How many task runs match the filters."""
        with self._database.snapshot() as connection:
            return task_run_queries.count_task_runs(connection=connection, body=body), 200

    def paginate_task_runs(
        self, *, body: models.PaginateTaskRunsBody | None = None
    ) -> tuple[Serialized[models.TaskRunPaginationResponse], Literal[200]]:
        """A page of the task runs that match the filters."""
        # The count and the page are two statements: both must see the same runs.
        with self._database.consistent_snapshot() as connection:
            page = task_run_queries.paginate_task_runs(connection=connection, body=body)
        return Serialized(page), 200

    def task_run_history(
        self, *, body: models.TaskRunHistoryBody
    ) -> tuple[list[models.HistoryResponse], Literal[200]]:
        """Counts of the matching task runs by state, interval by interval."""
        with self._database.snapshot() as connection:
            return task_run_queries.task_run_history(connection=connection, body=body), 200

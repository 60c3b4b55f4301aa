"""Handlers of the Task Runs operations."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from app.db.database import Database
from app.services import task_runs
from generated import models


class TaskRunHandlers:
    """The task-run operations of openapi.yaml (tag "Task Runs")."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    def create_task_run(
        self, *, body: models.TaskRunCreate
    ) -> tuple[models.TaskRun, Literal[200, 201]]:
        """Create a task run: 201 when this request inserted it, 200 when it already existed."""
        with self._database.transaction() as connection:
            outcome = task_runs.create_task_run(connection=connection, task_run=body)
        return outcome.task_run, 201 if outcome.created else 200

    def read_task_run(self, *, id: UUID) -> tuple[models.TaskRun, Literal[200]]:
        """Read a task run by id."""
        with self._database.snapshot() as connection:
            return task_runs.read_task_run(connection=connection, task_run_id=id), 200

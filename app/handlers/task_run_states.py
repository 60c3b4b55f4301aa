"""Handlers of the Task Run States operations."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from app.db.database import Database
from app.services import task_run_states
from generated import models


class TaskRunStateHandlers:
    """The task-run state operations of openapi.yaml (tag "Task Run States")."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    def read_task_run_states(self, *, task_run_id: UUID) -> tuple[list[models.State], Literal[200]]:
        """The states of a task run, oldest first."""
        with self._database.snapshot() as connection:
            states = task_run_states.read_task_run_states(
                connection=connection, task_run_id=task_run_id
            )
        return states, 200

    def read_task_run_state(self, *, id: UUID) -> tuple[models.State, Literal[200]]:
        """Read a task-run state by id."""
        with self._database.snapshot() as connection:
            return task_run_states.read_task_run_state(connection=connection, state_id=id), 200

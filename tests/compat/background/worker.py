"""A task worker serving the test tasks: `python -m tests.compat.background.worker`."""

from __future__ import annotations

from prefect.task_worker import serve

from tests.compat.background.tasks import TASKS

if __name__ == "__main__":
    serve(*TASKS)

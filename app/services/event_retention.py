"""Keeping events for a while: the ones received longer ago than the retention are deleted in
the background, by every service process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from datetime import timedelta

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable
from app.observability.logs import log_failure
from app.services.clock import utcnow

logger = logging.getLogger(__name__)

# How often the old events are looked for (more often when the retention is shorter), and
# how many one transaction deletes: a short transaction never keeps writers waiting long.
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 1000


def prune_old_events(database: Database, *, retention: timedelta) -> int:
    """Delete every event received longer than `retention` ago, a batch per transaction; how
    many were deleted.
    """
    deleted = 0
    while True:
        with database.transaction() as connection:
            batch = rows.delete_events_received_before(
                connection, before=utcnow() - retention, limit=PRUNE_BATCH
            )
        deleted += batch
        if batch < PRUNE_BATCH:
            return deleted


class EventPruner:
    """Prunes the old events from `start` until `stop`, off the event loop."""

    def __init__(self, database: Database, *, retention: timedelta, executor: Executor) -> None:
        self._database = database
        self._retention = retention
        self._executor = executor
        self._every_seconds = min(PRUNE_EVERY_SECONDS, retention.total_seconds())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin pruning (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._prune_periodically())

    async def stop(self) -> None:
        """Stop pruning; a batch being deleted is committed or rolled back first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _prune_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The first look comes one interval after the start, not with it: a worker that
            # starts does not ask for the writer's turn while the service's first requests
            # (and a restart's other workers) do, nor hold up a shutdown that follows soon.
            await asyncio.sleep(self._every_seconds)
            try:
                deleted = await loop.run_in_executor(
                    self._executor,
                    lambda: prune_old_events(self._database, retention=self._retention),
                )
                if deleted:
                    logger.info("deleted %d event(s) past the retention", deleted)
            except DatabaseUnavailable as error:
                # A known fault, already explained: no traceback to read.
                logger.warning("deleting old events postponed: database unavailable (%s)", error)
            except Exception as error:
                log_failure(
                    logger,
                    logging.ERROR,
                    "deleting old events failed; trying again later",
                    error,
                    with_stack=True,
                )

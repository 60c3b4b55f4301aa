"""Keeping events for a while: the ones received longer ago than the retention are deleted in
the background, by every service process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor, Future
from datetime import timedelta

from app.db import events as rows
from app.db.database import Database, DatabaseUnavailable
from app.observability import metrics
from app.observability.logs import log_failure
from app.services.clock import utcnow

logger = logging.getLogger(__name__)

# How often the old events are looked for (more often when the retention is shorter), and
# how many one transaction deletes: a short transaction never keeps writers waiting long.
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 1000
# After each full batch the pruner waits this many times as long as the batch took: a
# backlog (a retention shortened, a service down longer than it) is worked off without
# taking the writer's turn from requests more than a fifth of the time.
PAUSE_PER_BATCH_TIME = 4.0


def delete_a_batch(database: Database, *, retention: timedelta) -> int:
    """Delete up to PRUNE_BATCH of the events received longer than `retention` ago, in one
    transaction; how many. Counted in the metrics once committed, even while stopping.
    """
    with database.transaction() as connection:
        deleted = rows.delete_events_received_before(
            connection, before=utcnow() - retention, limit=PRUNE_BATCH
        )
    metrics.EVENTS_PRUNED.inc(deleted)
    return deleted


class EventPruner:
    """Prunes the old events from `start` until `stop`, off the event loop."""

    def __init__(self, database: Database, *, retention: timedelta, executor: Executor) -> None:
        self._database = database
        self._retention = retention
        self._executor = executor
        self._every_seconds = min(PRUNE_EVERY_SECONDS, retention.total_seconds())
        self._task: asyncio.Task[None] | None = None
        # The batch being deleted, on a thread of the executor, which cancelling cannot stop.
        self._batch: Future[int] | None = None

    def start(self) -> None:
        """Begin pruning (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._prune_periodically())

    async def stop(self) -> None:
        """Stop pruning; a batch being deleted is committed or rolled back first, and no
        other begins.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._batch is not None and not self._batch.done():
            # The task that would have reported its failure is cancelled.
            try:
                await asyncio.wrap_future(self._batch)
            except Exception as error:
                log_failure(
                    logger, logging.WARNING, "deleting old events failed", error, with_stack=False
                )

    async def _prune(self) -> int:
        """Delete the old events a batch at a time, each on a thread of the executor; how
        many. Cancelled, it begins no other batch.
        """
        deleted = 0
        while True:
            started = time.monotonic()
            self._batch = self._executor.submit(
                delete_a_batch, self._database, retention=self._retention
            )
            batch = await asyncio.wrap_future(self._batch)
            deleted += batch
            if batch < PRUNE_BATCH:
                return deleted
            await asyncio.sleep(PAUSE_PER_BATCH_TIME * (time.monotonic() - started))

    async def _prune_periodically(self) -> None:
        while True:
            # The first look comes one interval after the start, not with it: a worker that
            # starts does not ask for the writer's turn while the service's first requests
            # (and a restart's other workers) do, nor hold up a shutdown that follows soon.
            await asyncio.sleep(self._every_seconds)
            try:
                deleted = await self._prune()
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

"""The task workers' channel: background task runs delivered one at a time (asyncapi.yaml)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar
from uuid import UUID

from app.db.database import Database
from app.db.deliveries import ENQUEUED
from app.handlers.inbox import Inbox
from app.handlers.sockets import NORMAL_CLOSURE, PROTOCOL_VIOLATION, Disconnected, Socket
from app.observability import metrics
from app.observability.logs import log_failure
from app.services import deliveries
from app.services.ids import uuid7

logger = logging.getLogger(__name__)

# The task keys a subscription's log line names; a worker may serve thousands.
LOGGED_KEYS = 10
# The characters of a key or client id the line shows: the frame bounds neither's length.
LOGGED_CHARACTERS = 100

_Result = TypeVar("_Result")

# How often an idle worker's socket looks at the queue for runs another process enqueued
# (runs this process enqueues wake it at once).
IDLE_POLL_SECONDS = 0.5
# A delivery's claim is renewed this often while its worker has not answered.
RENEW_SECONDS = deliveries.CLAIM_SECONDS / 3

# What became of a delivery, as the metrics count it.
ACKNOWLEDGED = "acknowledged"
RETURNED = "returned"
DROPPED = "dropped"


class TaskRunSubscriptionHandler:
    """Delivers scheduled background runs to a task worker subscribed to their task keys."""

    def __init__(self, *, database: Database, executor: Executor) -> None:
        self._database = database
        self._executor = executor

    async def __call__(self, socket: Socket) -> None:
        """Serve one worker's socket: its subscription, then one run at a time until it goes."""
        task_keys = await _subscription(socket)
        if task_keys is None:
            return
        async with Inbox(socket) as inbox:
            try:
                while await self._deliver_next(socket, inbox, task_keys):
                    pass
            except Disconnected:
                return

    async def _deliver_next(self, socket: Socket, inbox: Inbox, task_keys: list[str]) -> bool:
        """Deliver the next run, or wait a while for one; False when the socket is done."""
        seen = ENQUEUED.generation
        claim_id = uuid7()
        run = await self._in_thread(
            deliveries.claim_next_delivery, task_keys=task_keys, claim_id=claim_id
        )
        if run is None:
            # Frames from an idle worker mean nothing; only its leaving does.
            await inbox.race(ENQUEUED.wait(seen=seen, timeout=IDLE_POLL_SECONDS))
            return True
        try:
            # What the worker sent while no run was out answers nothing (asyncapi.yaml): not
            # this run, which it has not seen yet.
            inbox.discard_pending()
            await socket.send(run.model_dump(mode="json"))
            reply, claimed = await self._reply(inbox, run.id, claim_id)
        except BaseException:
            # The worker left, or the service is stopping this socket: the run goes back.
            # Not awaited, so that it happens even while this task is being cancelled.
            self._return_soon(run.id, claim_id)
            metrics.count_delivery(RETURNED)
            raise
        return await self._settle(socket, reply, run.id, claim_id, claimed=claimed)

    def _return_soon(self, task_run_id: UUID, claim_id: UUID) -> None:
        def give_back() -> None:
            try:
                with self._database.transaction() as connection:
                    deliveries.return_delivery(
                        connection=connection, task_run_id=task_run_id, claim_id=claim_id
                    )
            except Exception as error:
                # The claim expires by itself; the run is delivered again then.
                log_failure(
                    logger,
                    logging.ERROR,
                    f"giving back the delivery of task run {task_run_id} failed",
                    error,
                    with_stack=True,
                )

        asyncio.get_running_loop().run_in_executor(self._executor, give_back)

    async def _reply(self, inbox: Inbox, task_run_id: UUID, claim_id: UUID) -> tuple[Any, bool]:
        """The worker's answer to a delivery, the claim kept alive while it comes; and
        whether the claim was still held at the last renewal.
        """
        claimed = True
        while True:
            frame = await inbox.next(timeout=RENEW_SECONDS)
            if frame is not None:
                return frame.data, claimed
            if claimed:
                claimed = await self._in_thread(
                    deliveries.renew_claim, task_run_id=task_run_id, claim_id=claim_id
                )
                if not claimed:
                    _log_lost_claim(task_run_id)

    async def _settle(
        self, socket: Socket, reply: Any, task_run_id: UUID, claim_id: UUID, *, claimed: bool
    ) -> bool:
        """Act on the worker's answer; False when the socket is done."""
        kind = reply.get("type") if isinstance(reply, dict) else None
        if kind == "ack":
            acknowledged = await self._in_thread(
                deliveries.acknowledge_delivery, task_run_id=task_run_id, claim_id=claim_id
            )
            if claimed and not acknowledged:  # a lost claim is logged once
                _log_lost_claim(task_run_id)
            metrics.count_delivery(ACKNOWLEDGED)
            return True
        if kind == "quit":
            await self._in_thread(
                deliveries.abandon_delivery, task_run_id=task_run_id, claim_id=claim_id
            )
            metrics.count_delivery(DROPPED)
            await socket.close(NORMAL_CLOSURE)
            return False
        await self._in_thread(
            deliveries.return_delivery, task_run_id=task_run_id, claim_id=claim_id
        )
        metrics.count_delivery(RETURNED)
        await socket.close(PROTOCOL_VIOLATION, "Protocol violation: expected 'ack' message")
        return False

    async def _in_thread(self, service: Callable[..., _Result], **arguments: Any) -> _Result:
        """Run one service call in its own transaction, off the event loop."""

        def call() -> _Result:
            with self._database.transaction() as connection:
                return service(connection=connection, **arguments)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def _log_lost_claim(task_run_id: UUID) -> None:
    # Benign when the run left the queue (deleted, or moved on by set_state); otherwise the
    # claim expired, and the run may have gone to another worker too.
    logger.warning(
        "the delivery of task run %s is no longer claimed (it expired, or the run left the"
        " queue); another worker may have received it too",
        task_run_id,
    )


async def _subscription(socket: Socket) -> list[str] | None:
    """The task keys of the worker's `subscribe` frame; None when the socket was closed."""
    try:
        frame = (await socket.receive()).data
    except Disconnected:
        return None
    refusal = _subscribe_refusal(socket, frame)
    if refusal is not None:
        await socket.close(PROTOCOL_VIOLATION, f"Protocol violation: {refusal}")
        return None
    keys: list[str] = frame["keys"]
    named = [_shortened(key) for key in keys[:LOGGED_KEYS]] + (
        [f"... {len(keys) - LOGGED_KEYS} more"] if len(keys) > LOGGED_KEYS else []
    )
    logger.info("task worker %r subscribed to %s", _shortened(frame["client_id"]), named)
    return keys


def _shortened(text: str) -> str:
    if len(text) <= LOGGED_CHARACTERS:
        return text
    return f"{text[:LOGGED_CHARACTERS]}... ({len(text)} characters)"


def _subscribe_refusal(socket: Socket, frame: Any) -> str | None:
    """Why a `subscribe` frame is refused, in Prefect's words; None when it is accepted."""
    if not isinstance(frame, dict) or frame.get("type") != "subscribe":
        return "expected 'subscribe' message"
    if not frame.get("keys"):
        return "expected 'keys' in subscribe message"
    if not frame.get("client_id"):
        return "expected 'client_id' in subscribe message"
    problems = socket.problems("subscribe", frame)
    described = "; ".join(str(problem) for problem in problems)
    return f"invalid 'subscribe' message: {described}" if problems else None

"""Every HTTP request gets an id, one log line and its place in the metrics.

asgi-correlation-id takes the id from an incoming `X-Request-ID` when it is acceptable (a
short token, so that it is safe in a log line), or makes a new one, and returns it in
`X-Request-ID` on every response. RequestRecorder, inside it, logs the request when its
response has been sent and counts it in the metrics, by the operationId Connexion's router
matched.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from uuid import uuid4

from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and a few separators: UUIDs, hex ids, trace ids; nothing that could break
# a log line or a header.
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

request_logger = logging.getLogger("app.requests")


def acceptable_request_id(value: str) -> bool:
    """Whether a client's X-Request-ID may be used as this request's id."""
    return _ACCEPTABLE_REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid4().hex


class RequestRecorder:
    """Logs one line per request and counts it in the metrics, once it has been answered.

    `metrics_path` (the scrape itself) is neither logged nor counted.
    """

    def __init__(
        self, app: ASGIApp, *, log_requests: bool, count_requests: bool, metrics_path: str
    ) -> None:
        self.app = app
        self.log_requests = log_requests
        self.count_requests = count_requests
        self.metrics_path = metrics_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == self.metrics_path:
            await self.app(scope, receive, send)
            return
        # Connexion's router records the operation in scope["extensions"] of a copy of the
        # scope; the copy shares this dict only if it exists before.
        extensions: dict[str, Any] = scope.setdefault("extensions", {})
        status = 500  # if nothing is sent, the server answers 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        if self.count_requests:
            metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            seconds = time.perf_counter() - started
            operation_id = extensions.get(ROUTING_CONTEXT, {}).get("operation_id")
            if self.count_requests:
                metrics.REQUESTS_IN_FLIGHT.dec()
                metrics.observe_request(operation_id=operation_id, status=status, seconds=seconds)
            if self.log_requests:
                _log_request(scope, operation_id=operation_id, status=status, seconds=seconds)


def _log_request(scope: Scope, *, operation_id: str | None, status: int, seconds: float) -> None:
    log_request(
        method=scope["method"],
        path=scope["path"],
        operation_id=operation_id,
        status=status,
        seconds=seconds,
    )


def log_request(
    *, method: str, path: str, operation_id: str | None, status: int, seconds: float
) -> None:
    """The log line of one answered request (its id is the current request id)."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    path = _printable(path)
    duration_ms = round(seconds * 1000, 2)
    request_logger.info(
        "%s %s %d %s %.2f ms",
        method,
        path,
        status,
        operation_id or "-",
        duration_ms,
        extra={
            "method": method,
            "path": path,
            "operation_id": operation_id,
            "status": status,
            "duration_ms": duration_ms,
        },
    )


def _printable(text: str) -> str:
    """`text` with its control characters escaped: a path decoded from `%0A` must not start
    a line of its own in the log, as if another request had been served.
    """
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def metrics_endpoint(count_queue: metrics.QueueCounter | None) -> ASGIApp:
    """`GET /metrics`: every worker's metrics in Prometheus's text format, with the queue of
    background runs as `count_queue` finds it at each scrape.
    """

    async def serve_metrics(scope: Scope, receive: Receive, send: Send) -> None:
        # Counting the queue reads the database: off the event loop.
        text = await run_in_threadpool(metrics.render, count_queue)
        response = Response(text, media_type=metrics.CONTENT_TYPE)
        await response(scope, receive, send)

    return serve_metrics

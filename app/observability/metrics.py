"""Prometheus metrics, counted across all the worker processes of one server.

prometheus-client decides once, when it is imported, whether values live in this process or
in files shared by every worker (multiprocess mode: PROMETHEUS_MULTIPROC_DIR names the
directory). `taskrun-api serve` sets that variable before it starts the workers, so each
worker writes its own files and any worker's `/metrics` answer adds up all of them.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, event

from app.observability.logs import error_line

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read at import, as prometheus-client does: the two must agree for the life of the process.
MULTIPROCESS = MULTIPROCESS_DIR_ENV in os.environ


def _prepare_multiprocess_directory(directory: str) -> None:
    """Make `directory` if it is missing, and prove that files can be made in it.

    :raises SystemExit: with one line saying why it cannot hold the metrics.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except FileExistsError:
        reason = os.strerror(errno.ENOTDIR)
    except OSError as error:
        reason = error.strerror or str(error)
    else:
        return
    raise SystemExit(
        error_line(
            f"{MULTIPROCESS_DIR_ENV} ({directory}) cannot be used as the metrics' directory:"
            f" {reason}"
        )
    )


if MULTIPROCESS:
    # prometheus-client opens its files there as the metrics below are made, so the
    # directory is checked here, at import, before any caller could catch an error: the
    # command imports this module before it reads its arguments. SystemExit with a message
    # ends any process (the command, a worker, another launcher) with that one line on
    # stderr and status 1, where the first metric would have ended it with a traceback.
    _prepare_multiprocess_directory(os.environ[MULTIPROCESS_DIR_ENV])
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# The label of requests that matched no operation of the document (unknown paths, the docs).
NO_OPERATION = "none"
# Requests take milliseconds; the buckets resolve that range and still catch slow outliers.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The service's own metrics only: in one process they are rendered from this registry, and
# in multiprocess mode from the files their values are written to.
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "taskrun_http_requests",
    "HTTP requests answered, by operationId of openapi.yaml and status.",
    ["operation_id", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "taskrun_http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by operationId.",
    ["operation_id"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "taskrun_http_requests_in_flight",
    "Requests received and not yet answered.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DATABASE_CONNECTIONS_IN_USE = Gauge(
    "taskrun_database_connections_in_use",
    "Database connections of the pools checked out right now.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
ORCHESTRATION_RESULTS = Counter(
    "taskrun_orchestration_results",
    "Proposed task-run states decided by set_state, by the decision's status.",
    ["status"],
    registry=REGISTRY,
)


WEBSOCKETS_OPEN = Gauge(
    "taskrun_websockets_open",
    "Websockets authenticated and being served, by channel (the path).",
    ["channel"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "taskrun_task_run_deliveries",
    "Background task runs sent to task workers, by what became of them: acknowledged,"
    " returned (to be delivered again) or dropped (the worker quit).",
    ["outcome"],
    registry=REGISTRY,
)
EVENTS_RECEIVED = Counter(
    "taskrun_events_received",
    "Events received on /api/events/in, by outcome: stored, duplicate (stored before) or"
    " refused (invalid).",
    ["outcome"],
    registry=REGISTRY,
)
EVENTS_PRUNED = Counter(
    "taskrun_events_pruned",
    "Events deleted once older than the retention.",
    registry=REGISTRY,
)


def count_orchestration(status: str) -> None:
    """Count one set_state decision (ACCEPT, REJECT, WAIT or ABORT)."""
    ORCHESTRATION_RESULTS.labels(status).inc()


def count_delivery(outcome: str) -> None:
    """Count one delivery of a background run by its outcome."""
    DELIVERIES.labels(outcome).inc()


def count_event(outcome: str) -> None:
    """Count one event received on /api/events/in by its outcome."""
    EVENTS_RECEIVED.labels(outcome).inc()


@dataclass(frozen=True)
class QueueSizes:
    """The queue of background runs as one scrape sees it."""

    # Runs no task worker holds: never sent, or sent and given back or expired.
    waiting: int
    # Runs sent to a task worker that has not acknowledged them yet.
    delivered: int
    # How long the longest-waiting run has waited; 0 when none waits.
    oldest_waiting_seconds: float


# Counts the queue for a scrape; None when it cannot be counted now (no database).
QueueCounter = Callable[[], QueueSizes | None]


class _QueueCollector:
    """The queue's gauges, read from the database at each scrape: every worker sees the
    same queue, so these are not kept per process like the other metrics.
    """

    def __init__(self, sizes: QueueSizes) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "taskrun_task_run_queue",
            "Background task runs on the queue, by status: waiting for a task worker, or"
            " delivered to one and not acknowledged yet.",
            labels=["status"],
        )
        runs.add_metric(["waiting"], self._sizes.waiting)
        runs.add_metric(["delivered"], self._sizes.delivered)
        yield runs
        yield GaugeMetricFamily(
            "taskrun_task_run_queue_oldest_waiting_seconds",
            "How long the run waiting longest for a task worker has waited; 0 when none waits.",
            value=self._sizes.oldest_waiting_seconds,
        )


# The labelled series of each (operationId, status): found once, not on every request.
_series: dict[tuple[str | None, int], tuple[Any, Any]] = {}


def observe_request(*, operation_id: str | None, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    series = _series.get((operation_id, status))
    if series is None:
        operation = operation_id or NO_OPERATION
        series = (REQUESTS.labels(operation, str(status)), REQUEST_DURATION.labels(operation))
        _series[(operation_id, status)] = series
    requests, duration = series
    requests.inc()
    duration.observe(seconds)


def watch_pool(engine: Engine) -> None:
    """Keep DATABASE_CONNECTIONS_IN_USE current as `engine`'s pool lends connections."""

    def checked_out(*_arguments: Any) -> None:
        DATABASE_CONNECTIONS_IN_USE.inc()

    def checked_in(*_arguments: Any) -> None:
        DATABASE_CONNECTIONS_IN_USE.dec()

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)


def render(count_queue: QueueCounter | None = None) -> bytes:
    """The metrics in Prometheus's text format, every worker's values added up, and the
    queue's sizes as `count_queue` finds them (it may read the database: call this off the
    event loop).
    """
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    text = generate_latest(registry)
    sizes = None if count_queue is None else count_queue()
    if sizes is None:
        return text
    queue_registry = CollectorRegistry(auto_describe=False)
    queue_registry.register(_QueueCollector(sizes))
    return text + generate_latest(queue_registry)


def forget_this_process() -> None:
    """At a worker's exit: drop its gauges (its counters stay in the totals)."""
    forget_process(os.getpid())


def forget_process(pid: int) -> None:
    """Drop the gauges of a worker that exited (its counters stay in the totals): by itself,
    or, killed or crashed, by the supervisor. The directory is looked up now, not at import:
    the supervisor imports this module before `taskrun-api serve` sets it.
    """
    if MULTIPROCESS_DIR_ENV in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

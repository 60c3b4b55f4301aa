"""The application factory, and `app` for ASGI servers (`uvicorn app.main:app`)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, NoReturn

from connexion import FlaskApp
from uvicorn.config import STARTUP_FAILURE

from app.contract.api import (
    CorsPolicy,
    contract_middlewares,
    ensure_every_operation_handled,
    mount_contract,
)
from app.contract.errors import ReadinessProblem
from app.contract.middleware import BodyLimits
from app.contract.spec import load_spec
from app.contract.websockets import SocketAccess, SocketHandler, mount_websockets
from app.contract.wsgi import install_wsgi_bridge
from app.db import deliveries, events
from app.db.database import LOCK_TIMEOUT_SECONDS, Database, DatabaseUnavailable
from app.db.migrate import head_revision
from app.db.notifications import other_processes_listener
from app.db.threads import DatabaseThreads
from app.handlers.concurrency_limits import ConcurrencyLimitHandlers
from app.handlers.events import EventsInHandler, EventsOutHandler
from app.handlers.root import AdminHandlers, RootHandlers
from app.handlers.task_run_states import TaskRunStateHandlers
from app.handlers.task_run_subscriptions import TaskRunSubscriptionHandler
from app.handlers.task_runs import TaskRunHandlers
from app.observability import metrics
from app.observability.logs import log_failure, skip_unused_record_fields
from app.services.deliveries import queue_sizes
from app.services.errors import NotReady
from app.services.event_feed import EventFeed
from app.services.event_retention import EventPruner
from app.services.readiness import check_readiness
from app.settings import Settings, comma_separated
from generated.routes import HandlerGroups, Routes

DATABASE_EXTENSION = "taskrun_api.database"
# Operations whose handlers answer from memory: served on the event loop, never queued
# behind database work (the liveness probe above all).
OPERATIONS_WITHOUT_DATABASE = frozenset(
    {
        "health_check_health_get",
        "server_version_version_get",
        "hello_hello_get",
        "create_csrf_token_csrf_token_get",
        "read_server_version_admin_version_get",
        "bulk_increment_active_slots_with_lease_v2_concurrency_limits_increment_with_lease_post",
        "bulk_decrement_active_slots_with_lease_v2_concurrency_limits_decrement_with_lease_post",
    }
)
ABANDONED_REQUESTS_EXIT_STATUS = 1

logger = logging.getLogger(__name__)


def handler_groups(database: Database, settings: Settings) -> HandlerGroups:
    """The handlers of each tag of openapi.yaml (a new tag needs its group here)."""
    return {
        "task_runs": TaskRunHandlers(database=database),
        "task_run_states": TaskRunStateHandlers(database=database),
        "root": RootHandlers(
            api_version=load_spec()["info"]["version"],
            database=database,
            schema_head=head_revision(),
        ),
        "admin": AdminHandlers(server_version=settings.prefect_server_version),
        "concurrency_limits_v2": ConcurrencyLimitHandlers(),
    }


def create_routes(database: Database, settings: Settings) -> Routes:
    """The generated route stubs, each group bound to its handlers.

    :raises MissingHandlers: naming each group or handler method openapi.yaml needs and
        the handlers lack.
    """
    groups = handler_groups(database, settings)
    ensure_every_operation_handled(groups)
    return Routes(**groups)


def cors_policy(settings: Settings) -> CorsPolicy | None:
    """The CORS policy the settings describe; None when no origin is allowed."""
    origins = comma_separated(settings.cors_allowed_origins)
    if not origins:
        return None
    return CorsPolicy(
        origins=origins,
        methods=comma_separated(settings.cors_allowed_methods),
        headers=comma_separated(settings.cors_allowed_headers),
    )


def abandon_running_requests(count: int, database: Database) -> NoReturn:
    """End this process now, with status 1, leaving `count` unfinished requests undone.

    Their transactions are never committed: the database rolls them back. A write of one
    statement on PostgreSQL has no transaction to roll back, so its statement is cancelled.
    """
    logger.error(
        "%d request(s) still running after the graceful shutdown period: exiting without them",
        count,
    )
    database.cancel_one_statement_writes()
    metrics.forget_this_process()
    os._exit(ABANDONED_REQUESTS_EXIT_STATUS)


def create_app(settings: Settings | None = None) -> FlaskApp:
    """A Connexion app serving openapi.yaml from the database `settings` names."""
    settings = settings or Settings()
    logging.getLogger("app").setLevel(settings.log_level)
    skip_unused_record_fields()
    database = Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        lock_timeout=settings.database_lock_timeout,
        statement_timeout=settings.database_statement_timeout,
    )
    if settings.metrics_enabled:
        metrics.watch_pool(database.engine)
    # The database work of the websocket channels and of the event pruner runs here, off
    # the event loop.
    socket_work = DatabaseThreads(threads=settings.threads_per_worker)
    # Wakes this process's sockets when another process enqueues a run or stores an event.
    listener = other_processes_listener(
        database.url,
        {
            deliveries.ENQUEUED_CHANNEL: deliveries.ENQUEUED,
            events.STORED_CHANNEL: events.STORED_ELSEWHERE,
        },
    )

    pruner = EventPruner(
        database,
        retention=timedelta(seconds=settings.event_retention_seconds),
        executor=socket_work,
    )

    @asynccontextmanager
    async def close_on_shutdown(_app: Any) -> AsyncIterator[None]:
        stop_when_the_supervisor_is_gone()
        if listener is not None:
            listener.start()
        pruner.start()
        yield
        await pruner.stop()
        if listener is not None:
            listener.stop()
        # The server has waited up to GRACEFUL_SHUTDOWN_SECONDS and cancelled the requests
        # still running; their handler threads may go on, keep the process alive, and even
        # commit a write whose client was answered 500. The process ends without them.
        if bridge.running:
            abandon_running_requests(bridge.running, database)
        # What the sockets were doing ends first: it may still be using a connection.
        socket_work.drain(timeout=LOCK_TIMEOUT_SECONDS)
        database.dispose()
        metrics.forget_this_process()

    app = FlaskApp(
        __name__,
        lifespan=close_on_shutdown,
        middlewares=contract_middlewares(validate_responses=settings.validate_responses),
    )
    bridge = install_wsgi_bridge(
        app,
        threads=settings.threads_per_worker,
        read_threads=settings.read_threads_per_worker,
        inline_operations=OPERATIONS_WITHOUT_DATABASE,
    )
    auth_string = settings.api_auth_string
    mount_contract(
        app,
        create_routes(database, settings),
        validate_responses=settings.validate_responses,
        body_limits=BodyLimits(
            max_bytes=settings.max_request_body_bytes,
            idle_timeout=settings.request_body_timeout,
            max_buffered_bytes=settings.max_buffered_body_bytes,
        ),
        basic_auth=auth_string.get_secret_value() if auth_string else None,
        log_requests=settings.access_log,
        metrics_enabled=settings.metrics_enabled,
        cors=cors_policy(settings),
        count_queue=queue_counter(database),
        readiness_problem=readiness_problem(database),
    )
    mount_websockets(
        app,
        handlers=create_socket_handlers(database, socket_work),
        access=SocketAccess(
            auth_string=auth_string.get_secret_value() if auth_string else None,
            auth_timeout=settings.request_header_timeout,
        ),
    )
    app.app.extensions[DATABASE_EXTENSION] = database
    return app


def readiness_problem(database: Database) -> ReadinessProblem:
    """Why the service cannot serve from `database` now, as `/api/ready` says it; None when
    it can.
    """
    head = head_revision()

    def problem() -> NotReady | None:
        try:
            check_readiness(database=database, schema_head=head)
        except NotReady as not_ready:
            return not_ready
        return None

    return problem


def queue_counter(database: Database) -> metrics.QueueCounter:
    """How a scrape of /metrics counts the queue of background runs in `database`."""

    def count() -> metrics.QueueSizes | None:
        try:
            with database.snapshot() as connection:
                return queue_sizes(connection=connection)
        except DatabaseUnavailable as error:
            # The other metrics are still served; the queue's are left out of this scrape.
            logger.warning("/metrics: the queue was not counted: %s", error.reason)
        except Exception as error:
            # A database without the service's tables (`serve --no-migrate`), for one: a
            # warning at every scrape, by the error's name, not a traceback each time.
            log_failure(
                logger,
                logging.WARNING,
                "/metrics: the queue was not counted",
                error,
                with_stack=False,
            )
        return None

    return count


def create_socket_handlers(database: Database, executor: Executor) -> dict[str, SocketHandler]:
    """The handler of each websocket channel of asyncapi.yaml, by address; their database
    work runs on `executor`.
    """
    feed = EventFeed(database, executor=executor)
    return {
        "/task_runs/subscriptions/scheduled": TaskRunSubscriptionHandler(
            database=database, executor=executor
        ),
        "/events/in": EventsInHandler(database=database, feed=feed, executor=executor),
        "/events/out": EventsOutHandler(database=database, feed=feed, executor=executor),
    }


def database_of(app: FlaskApp) -> Database:
    """The database an app created by `create_app` uses."""
    database: Database = app.app.extensions[DATABASE_EXTENSION]
    return database


_app: FlaskApp | None = None


def __getattr__(name: str) -> Any:
    # `app` is built on first access, so importing this module has no side effects.
    global _app  # noqa: PLW0603
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        try:
            _app = create_app()
        except Exception:
            # A worker that cannot build the application would fail the same way each time
            # it is started again: uvicorn's start-up failure stops the server instead.
            logger.exception("the application could not be created")
            raise SystemExit(STARTUP_FAILURE) from None
        freeze_startup_heap()
    return _app


def stop_when_the_supervisor_is_gone() -> None:
    """In a worker: SIGTERM this process (a graceful stop) once its supervisor has exited,
    which would otherwise leave it serving for ever, holding the port. Each worker calls it
    as its application starts; in a server of one process, which has no supervisor, it does
    nothing.

    The thread waits on multiprocessing's sentinel for the parent: a pipe whose write end
    only the supervisor holds, so it reads end-of-file the moment the supervisor is gone,
    whatever its end, also when that was before this thread started. Linux's
    PR_SET_PDEATHSIG would fire when the parent *thread* that spawned the worker exits, not
    the process; polling `os.getppid()` is late and trips over sub-reapers and pid reuse.
    """
    supervisor = multiprocessing.parent_process()
    if supervisor is None:  # not a spawned worker: nothing watches over this process
        return

    def watch() -> None:
        supervisor.join()
        logger.warning("Supervisor [%s] is gone; stopping.", supervisor.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, the document, the app) out of every later
    garbage collection.

    That is most of a worker's 145,000-odd tracked objects, and they live as long as the
    process. A full collection walked them all, about 30 ms of CPU, and under load ran every
    few seconds, holding up every request in the worker meanwhile.
    """
    gc.collect()
    gc.freeze()

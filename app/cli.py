"""The `taskrun-api` command: serve the API, migrate the database, check the handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import cast

import uvicorn

from app import __version__
from app.contract.api import contract_problems
from app.db.database import Database, use_wal
from app.db.migrate import check, downgrade, upgrade
from app.main import handler_groups
from app.observability.logs import log_config
from app.observability.metrics import MULTIPROCESS_DIR_ENV
from app.serving.protocol import BoundedHttpToolsProtocol, HeadLimits, RefusalRecording
from app.serving.supervisor import WorkerTimeouts, run
from app.settings import Settings

logger = logging.getLogger(__name__)


@contextmanager
def metrics_directory(*, enabled: bool) -> Iterator[None]:
    """Point the workers' prometheus-client at one directory for the life of the server.

    An operator's PROMETHEUS_MULTIPROC_DIR is used (emptied first: files of an earlier run
    would add to the counts); otherwise a temporary directory, removed afterwards.
    """
    if not enabled:
        yield
        return
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    directory = tempfile.mkdtemp(prefix="taskrun-api-metrics-")
    os.environ[MULTIPROCESS_DIR_ENV] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _exit_with_success(_signal_number: int, _frame: object) -> None:
    raise SystemExit(0)


def serve(arguments: argparse.Namespace, settings: Settings) -> int:
    """Migrate the database, then serve the API with `workers` processes."""
    # Before any worker starts: each one would fail the same way, and be started again.
    if _reported_contract_problems(settings):
        return 1
    logging_config = log_config(level=settings.log_level, log_format=settings.log_format)
    # The migration's lines are formatted like the server's.
    logging.config.dictConfig(logging_config)
    if arguments.no_migrate:
        use_wal(settings.database_url)
    else:
        logger.info("migrating %s", Database(settings.database_url).url.render_as_string())
        upgrade(settings.database_url)
    head_limits = HeadLimits(
        timeout=settings.request_header_timeout,
        max_bytes=settings.max_request_header_bytes,
        max_headers=settings.max_request_headers,
    )
    refusal_recording = RefusalRecording(log=settings.access_log, count=settings.metrics_enabled)
    config = uvicorn.Config(
        "app.main:app",
        host=arguments.host or settings.host,
        port=arguments.port if arguments.port is not None else settings.port,
        workers=arguments.workers or settings.workers,
        log_config=logging_config,
        # The service logs each request itself (ACCESS_LOG), with more than uvicorn knows.
        access_log=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        # uvicorn only calls what it is given here, as it would call a protocol class.
        http=cast(
            type[asyncio.Protocol],
            partial(BoundedHttpToolsProtocol, limits=head_limits, recording=refusal_recording),
        ),
        # uvicorn waits this long for a worker it starts on SIGHUP.
        timeout_worker_healthcheck=math.ceil(settings.worker_startup_timeout),
    )
    timeouts = WorkerTimeouts(
        startup=settings.worker_startup_timeout, healthcheck=settings.worker_healthcheck_timeout
    )
    # On SIGTERM uvicorn stops accepting, waits up to GRACEFUL_SHUTDOWN_SECONDS for the
    # requests in flight and shuts the app down; then it raises the signal again under the
    # handler it found, so that the process ends the way the signal asks: with this
    # handler, a clean exit.
    signal.signal(signal.SIGTERM, _exit_with_success)
    with metrics_directory(enabled=settings.metrics_enabled):
        run(config, timeouts=timeouts)
    return 0


def db_upgrade(arguments: argparse.Namespace, settings: Settings) -> int:
    """Apply the migrations up to a revision (the newest by default)."""
    upgrade(settings.database_url, arguments.revision)
    return 0


def db_downgrade(arguments: argparse.Namespace, settings: Settings) -> int:
    """Revert the migrations down to a revision ("base" removes every table)."""
    downgrade(settings.database_url, arguments.revision)
    return 0


def db_check(_arguments: argparse.Namespace, settings: Settings) -> int:
    """Fail when the tables differ from what the migrations create."""
    check(settings.database_url)
    return 0


def check_handlers(_arguments: argparse.Namespace, settings: Settings) -> int:
    """Fail, naming them, when route stubs, handler groups or handler methods that the
    operations of openapi.yaml need are missing.
    """
    return 1 if _reported_contract_problems(settings) else 0


def _reported_contract_problems(settings: Settings) -> bool:
    """Print to stderr why the service cannot serve openapi.yaml, if it cannot; whether so."""
    problems = contract_problems(handler_groups(Database("sqlite://"), settings))
    for problem in problems:
        print(problem, file=sys.stderr)
    return bool(problems)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrun-api", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help=serve.__doc__)
    serve_parser.add_argument("--host", help="default: $HOST or 127.0.0.1")
    serve_parser.add_argument("--port", type=int, help="default: $PORT or 4200")
    serve_parser.add_argument("--workers", type=int, help="default: $WORKERS or 2")
    serve_parser.add_argument("--no-migrate", action="store_true", help="do not migrate first")
    serve_parser.set_defaults(handler=serve)

    db_parser = commands.add_parser("db", help="database schema migrations")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True)
    upgrade_parser = db_commands.add_parser("upgrade", help=db_upgrade.__doc__)
    upgrade_parser.add_argument("revision", nargs="?", default="head")
    upgrade_parser.set_defaults(handler=db_upgrade)
    downgrade_parser = db_commands.add_parser("downgrade", help=db_downgrade.__doc__)
    downgrade_parser.add_argument("revision")
    downgrade_parser.set_defaults(handler=db_downgrade)
    db_commands.add_parser("check", help=db_check.__doc__).set_defaults(handler=db_check)

    commands.add_parser("check-handlers", help=check_handlers.__doc__).set_defaults(
        handler=check_handlers
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `taskrun-api` console script."""
    arguments = _parser().parse_args(argv)
    exit_code: int = arguments.handler(arguments, Settings())
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())

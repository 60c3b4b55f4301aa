"""The `taskrun-api` command: serve the API, migrate the database, check the handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import uvicorn
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app import __version__
from app.contract.api import contract_problems
from app.db.database import Database, is_in_memory_sqlite, normalise_url, use_wal
from app.db.migrate import check, current_revisions, downgrade, head_revision, upgrade
from app.main import handler_groups
from app.observability.logs import error_line, log_config
from app.observability.metrics import MULTIPROCESS_DIR_ENV
from app.serving.listening import listening_socket, printable_address
from app.serving.protocol import BoundedHttpToolsProtocol, HeadLimits, RefusalRecording
from app.serving.supervisor import WorkerTimeouts, run
from app.settings import Settings

logger = logging.getLogger(__name__)

MAX_PORT = 65535
# Settings whose values are not repeated in an error: they can hold a password.
SECRET_SETTINGS = frozenset({"database_url", "api_auth_string"})

# The files prometheus-client writes in its multiprocess directory: `<type>_<pid>.db`.
METRICS_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")


class StartupError(Exception):
    """A setting or an environment the service cannot start with; its message says why."""


def metrics_files(directory: Path) -> list[Path]:
    """prometheus-client's files in `directory`.

    :raises StartupError: the directory holds other `.db` files, which prometheus-client
        would read as its own, and the start would delete as stale (an SQLite database too).
    """
    files = list(directory.glob("*.db"))
    foreign = [path.name for path in files if not METRICS_FILE.fullmatch(path.name)]
    if foreign:
        raise StartupError(
            f"{MULTIPROCESS_DIR_ENV} ({directory}) holds files that are not prometheus-client's:"
            f" {', '.join(sorted(foreign))}; give the metrics a directory of their own"
        )
    return files


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
        for stale in metrics_files(Path(given)):
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
    if settings.metrics_enabled and os.environ.get(MULTIPROCESS_DIR_ENV):
        metrics_files(Path(os.environ[MULTIPROCESS_DIR_ENV]))
    logging_config = log_config(level=settings.log_level, log_format=settings.log_format)
    # The migration's lines are formatted like the server's.
    logging.config.dictConfig(logging_config)
    if is_in_memory_sqlite(settings.database_url):
        raise StartupError(
            "DATABASE_URL names an in-memory SQLite database, which each worker process would"
            " have a separate, empty copy of: give it a file (sqlite:///path)"
        )
    host = arguments.host or settings.host
    port = arguments.port if arguments.port is not None else settings.port
    with _listening(host, port) as listening:
        if arguments.no_migrate:
            use_wal(settings.database_url)
        else:
            logger.info("migrating %s", _printable_url(settings.database_url))
            upgrade(settings.database_url)
        _serve_on(listening, arguments, settings, logging_config)
    return 0


def _listening(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the migration or any worker: an address in use
    would otherwise be found only once the application is built (or by each worker).
    """
    try:
        return listening_socket(host, port)
    except OSError as error:
        raise StartupError(
            f"cannot listen on {printable_address(host, port)}: {error.strerror or error}"
        ) from error


def _serve_on(
    listening: socket.socket,
    arguments: argparse.Namespace,
    settings: Settings,
    logging_config: dict[str, Any],
) -> None:
    """Run uvicorn's workers on `listening` until the server is stopped."""
    head_limits = HeadLimits(
        timeout=settings.request_header_timeout,
        max_bytes=settings.max_request_header_bytes,
        max_headers=settings.max_request_headers,
    )
    refusal_recording = RefusalRecording(log=settings.access_log, count=settings.metrics_enabled)
    # The address bound: a name resolved, the port the system chose for 0.
    host, port = listening.getsockname()[:2]
    config = uvicorn.Config(
        "app.main:app",
        host=host,
        port=port,
        workers=arguments.workers or settings.workers,
        log_config=logging_config,
        # The service logs each request itself (ACCESS_LOG), with more than uvicorn knows.
        access_log=False,
        # Typed int by uvicorn, but only handed to asyncio.wait_for, which takes fractions.
        timeout_graceful_shutdown=cast(int, settings.graceful_shutdown_seconds),
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
        run(config, listening, timeouts=timeouts)


def db_upgrade(arguments: argparse.Namespace, settings: Settings) -> int:
    """Apply the migrations up to a revision (the newest by default)."""
    _log_migrations(settings)
    upgrade(settings.database_url, arguments.revision)
    return 0


def db_downgrade(arguments: argparse.Namespace, settings: Settings) -> int:
    """Revert the migrations down to a revision ("base" removes every table)."""
    _log_migrations(settings)
    downgrade(settings.database_url, arguments.revision)
    return 0


def db_check(_arguments: argparse.Namespace, settings: Settings) -> int:
    """Fail when the tables differ from what the migrations create."""
    check(settings.database_url)
    return 0


def db_current(_arguments: argparse.Namespace, settings: Settings) -> int:
    """Print the revision the database's schema is at, and whether that is the newest."""
    database = Database(settings.database_url)
    try:
        with database.snapshot() as connection:
            revisions = current_revisions(connection)
    finally:
        database.dispose()
    head = head_revision()
    if not revisions:
        print(f"no revision (an empty database); the newest is {head}")
    for revision in revisions:
        print(
            f"{revision} (the newest)" if revision == head else f"{revision}; the newest is {head}"
        )
    return 0


def _log_migrations(settings: Settings) -> None:
    """Each migration as Alembic applies it, on stderr as the server logs."""
    logging.config.dictConfig(log_config(level=settings.log_level, log_format=settings.log_format))
    logger.info("migrating %s", _printable_url(settings.database_url))


def _printable_url(database_url: str) -> str:
    """The database URL without its passwords (in the user part or the query)."""
    url = normalise_url(database_url)
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


def check_handlers(_arguments: argparse.Namespace, settings: Settings) -> int:
    """Fail, naming them, when route stubs, handler groups or handler methods that the
    operations of openapi.yaml need are missing.
    """
    return 1 if _reported_contract_problems(settings) else 0


def _reported_contract_problems(settings: Settings) -> bool:
    """Print to stderr why the service cannot serve openapi.yaml, one error line a problem,
    if it cannot; whether so.
    """
    problems = contract_problems(handler_groups(Database("sqlite://"), settings))
    for problem in problems:
        _print_error(problem)
    return bool(problems)


def _port(text: str) -> int:
    number = int(text)
    if not 0 <= number <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{number} is not a port (0 to {MAX_PORT})")
    return number


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not 1 or more")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrun-api", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help=serve.__doc__)
    serve_parser.add_argument("--host", help="default: $HOST or 127.0.0.1")
    serve_parser.add_argument("--port", type=_port, help="default: $PORT or 4200")
    serve_parser.add_argument("--workers", type=_positive, help="default: $WORKERS or 2")
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
    db_commands.add_parser("current", help=db_current.__doc__).set_defaults(handler=db_current)

    commands.add_parser("check-handlers", help=check_handlers.__doc__).set_defaults(
        handler=check_handlers
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `taskrun-api` console script.

    A setting, database or revision it cannot work with ends it with one line on stderr
    and status 1, not a traceback.
    """
    arguments = _parser().parse_args(argv)
    try:
        exit_code: int = arguments.handler(arguments, Settings())
    except ValidationError as error:
        return _failed(f"invalid settings: {_settings_errors(error)}")
    except (StartupError, CommandError) as error:
        return _failed(str(error))
    except (SQLAlchemyError, sqlite3.Error) as error:
        return _failed(f"the database cannot be used: {_database_error(error)}")
    return exit_code


def _failed(message: str) -> int:
    _print_error(message)
    return 1


def _print_error(message: str) -> None:
    print(error_line(message), file=sys.stderr)


def _settings_errors(error: ValidationError) -> str:
    """Each refused setting by its variable, with why, and what it was unless it can hold a
    password.
    """
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        if not field:
            parts.append(item["msg"])
            continue
        given = "" if field in SECRET_SETTINGS else f" (got {item['input']!r})"
        parts.append(f"{field.upper()}: {item['msg']}{given}")
    return "; ".join(parts)


def _database_error(error: SQLAlchemyError | sqlite3.Error) -> str:
    """The driver's error and the first line of its message (a connection refused, an
    unknown database); at start-up no request's data is in it.
    """
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"


if __name__ == "__main__":
    raise SystemExit(main())

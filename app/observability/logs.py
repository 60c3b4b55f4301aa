"""Logging: readable text or one JSON object per line, each line naming its request.

The request id lives in asgi-correlation-id's context variable, set by its middleware for
the whole of a request (the handler's thread included, which runs in a copy of the
request's context), so any code can name it with `current_request_id()`.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from typing import Any, Literal

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
NO_REQUEST = "-"
# How uvicorn's line for a websocket begins: the client, then the path with its query.
_UVICORN_WEBSOCKET_LINE = '%s - "WebSocket %s"'
TEXT_FORMAT = "%(levelname)-8s %(request_id)s %(message)s"
# uvicorn adds an ANSI-coloured copy of some messages; a JSON line needs the plain one only.
_NOT_IN_JSON = [*RESERVED_ATTRS, "color_message"]


def current_request_id() -> str | None:
    """The id of the request being served, or None outside of one."""
    return correlation_id.get()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, or "-" outside of one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = correlation_id.get() or NO_REQUEST
        return True


class WebsocketQueryFilter(logging.Filter):
    """Leaves the query string out of uvicorn's line for each websocket, as the service's
    own request lines leave it out: a query can carry a token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith(_UVICORN_WEBSOCKET_LINE)
            and isinstance(arguments, tuple)
            and len(arguments) >= 2
        ):
            path = str(arguments[1]).partition("?")[0]
            record.args = (arguments[0], path, *arguments[2:])
        return True


def _formatter(log_format: LogFormat) -> dict[str, Any]:
    if log_format == "json":
        return {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            # An ISO 8601 instant in UTC.
            "timestamp": "time",
            "reserved_attrs": _NOT_IN_JSON,
        }
    return {"format": TEXT_FORMAT}


def error_line(message: str) -> str:
    """The line a command ends with when it refuses to go on: `taskrun-api: error: ...`, as
    a JSON object like every other line when LOG_FORMAT says json. Read from the environment
    here, not from the settings: the settings themselves may be what is refused.
    """
    text = f"taskrun-api: error: {message}"
    if _log_format_requested() != "json":
        return text
    options = {key: value for key, value in _formatter("json").items() if key != "()"}
    formatter = JsonFormatter(**options)
    record = logging.LogRecord("app.cli", logging.ERROR, "", 0, text, None, None)
    record.request_id = NO_REQUEST
    return formatter.format(record)


def _log_format_requested() -> str:
    # Environment variables name settings whatever their case, as the settings read them.
    for name, value in os.environ.items():
        if name.lower() == "log_format":
            return value.strip().lower()
    return "text"


def log_config(*, level: str, log_format: LogFormat) -> dict[str, Any]:
    """The logging configuration of the server and the service (`logging.config` schema).

    Every logger, uvicorn's included, writes through one handler on the root logger, in
    one format, each line naming the request it was logged for.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "websocket_query": {"()": WebsocketQueryFilter},
        },
        "formatters": {"lines": _formatter(log_format)},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "lines",
                "filters": ["request_id", "websocket_query"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        # uvicorn's loggers: at the same level, and through the root logger's handler.
        "loggers": {
            name: {"level": level, "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def skip_unused_record_fields() -> None:
    """Stop the logging module from collecting what no line of the service shows.

    Finding the calling file and line, and the thread and process names, is most of the
    cost of a log record (the "Optimization" section of Python's logging HOWTO names these
    switches); the service logs a line per request, so it is worth saving.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_failure(
    logger: logging.Logger, level: int, what: str, error: BaseException, *, with_stack: bool
) -> None:
    """Log a failure: what happened, and the error by name, never by content.

    The messages of database errors can hold rows and SQL parameters, and those of
    validation errors the values validated, so only the names of the exception and of its
    causes are logged, and with `with_stack` the code locations it passed through. Every
    unexpected failure the service logs, of a request or of its work in the background,
    goes through here; known faults (the database unavailable) are logged in the service's
    own words.
    """
    lines = [f"{what}: {_names(error)}"]
    if with_stack:
        lines.append("Traceback (most recent call last; messages and source left out):")
        lines += [
            f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}'
            for frame in traceback.extract_tb(error.__traceback__)
        ]
    logger.log(level, "%s", "\n".join(lines))


def _names(error: BaseException) -> str:
    """ "sqlalchemy.exc.OperationalError, caused by sqlite3.OperationalError", and so on."""
    return ", caused by ".join(
        f"{type(cause).__module__}.{type(cause).__qualname__}" for cause in _chain(error)
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__

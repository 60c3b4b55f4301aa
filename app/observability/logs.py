"""Logging: readable text or one JSON object per line, each line naming its request.

The request id lives in asgi-correlation-id's context variable, set by its middleware for
the whole of a request (the handler's thread included, which runs in a copy of the
request's context), so any code can name it with `current_request_id()`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS
from uvicorn.config import LOGGING_CONFIG

LogFormat = Literal["text", "json"]
NO_REQUEST = "-"
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


def _formatters(log_format: LogFormat) -> dict[str, dict[str, Any]]:
    if log_format == "json":
        json_formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            # An ISO 8601 instant in UTC.
            "timestamp": "time",
            "reserved_attrs": _NOT_IN_JSON,
        }
        return {"uvicorn": json_formatter, "service": json_formatter}
    uvicorn_text = copy.deepcopy(LOGGING_CONFIG["formatters"]["default"])
    service_text = {**uvicorn_text, "fmt": "%(levelprefix)s %(request_id)s %(message)s"}
    return {"uvicorn": uvicorn_text, "service": service_text}


def log_config(*, level: str, log_format: LogFormat) -> dict[str, Any]:
    """The logging configuration of the server and the service (`logging.config` schema).

    uvicorn's own lines keep their look in text; every other logger (the service's, the
    libraries') goes through the root logger, its lines prefixed with the request id.
    """

    def handler(formatter: str) -> dict[str, Any]:
        return {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": formatter,
            "filters": ["request_id"],
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": _formatters(log_format),
        "handlers": {"uvicorn": handler("uvicorn"), "service": handler("service")},
        "root": {"handlers": ["service"], "level": level},
        "loggers": {
            name: {"handlers": ["uvicorn"], "level": level, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }

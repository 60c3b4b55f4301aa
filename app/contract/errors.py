"""Every error -> one HTTP response, always JSON, never a traceback.

Validation failures get 422 with `detail` (a list of {loc, msg, type}) and, for drop-in
compatibility with Prefect's server, `exception_message`, `exception_detail` and
`request_body`. Every other error gets `{"detail": "<what went wrong>"}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from connexion import FlaskApp
from connexion.exceptions import BadRequestProblem, ProblemException, UnsupportedMediaTypeProblem
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.contract.middleware import (
    ClientDisconnected,
    InvalidApiVersion,
    MethodNotAllowed,
    RequestBodyTimeout,
    RequestTooLarge,
    TooManyUnfinishedBodies,
    Unauthorized,
)
from app.contract.validation import RequestValidationError
from app.db.database import DatabaseUnavailable
from app.observability.logs import log_failure
from app.services.errors import Conflict, NotFound, NotReady, Unprocessable
from generated.routes import InvalidRequestModel

logger = logging.getLogger(__name__)

VALIDATION_MESSAGE = "Invalid request received."
RETRY_AFTER_SECONDS = 1

ErrorHandler = Callable[[ConnexionRequest, Any], Awaitable[ConnexionResponse]]


def json_response(
    status: int, content: Any, *, headers: dict[str, str] | None = None
) -> ConnexionResponse:
    """A JSON error response."""
    return ConnexionResponse(
        status_code=status,
        mimetype="application/json",
        content_type="application/json",
        body=json.dumps(content, separators=(",", ":"), default=_as_text).encode(),
        headers=headers or {},
    )


def _as_text(value: object) -> str:
    # An error response must never fail itself: anything JSON cannot hold is shown as text.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def detail_response(status: int, detail: str, **kwargs: Any) -> ConnexionResponse:
    """`{"detail": ...}`, the body of every error that is not a validation failure."""
    return json_response(status, {"detail": detail}, **kwargs)


def validation_response(errors: list[dict[str, Any]], request_body: Any) -> ConnexionResponse:
    """422 with the error list under both names clients look for."""
    return json_response(
        422,
        {
            "detail": errors,
            "exception_message": VALIDATION_MESSAGE,
            "exception_detail": errors,
            "request_body": request_body,
        },
    )


async def _validation(
    _request: ConnexionRequest, error: RequestValidationError | InvalidRequestModel
) -> ConnexionResponse:
    # The body failed the contract's schema, or (rarely) only its generated model.
    return validation_response(error.errors, error.request_body)


async def _bad_request(_request: ConnexionRequest, error: BadRequestProblem) -> ConnexionResponse:
    # Any other complaint of Connexion's about the request; it is a validation failure too.
    errors = [{"loc": ["body"], "msg": str(error.detail or error.title), "type": "value_error"}]
    return validation_response(errors, None)


# Errors answered with a fixed status and their own message as the detail.
DETAIL_STATUSES: dict[type[Exception], int] = {
    InvalidApiVersion: 400,
    NotFound: 404,
    RequestBodyTimeout: 408,
    Conflict: 409,
    RequestTooLarge: 413,
    Unprocessable: 422,
}


async def _detail(_request: ConnexionRequest, error: Exception) -> ConnexionResponse:
    status = next(code for kind, code in DETAIL_STATUSES.items() if isinstance(error, kind))
    return detail_response(status, str(error))


async def _client_disconnected(
    _request: ConnexionRequest, _error: ClientDisconnected
) -> ConnexionResponse:
    # Nobody is left to read the answer; it only has to end the request, unacted on.
    logger.info("the client left before its request body was whole: not acted on")
    return detail_response(400, "The client disconnected before the request body was whole.")


async def _unauthorized(_request: ConnexionRequest, error: Unauthorized) -> ConnexionResponse:
    return detail_response(
        401, str(error), headers={"WWW-Authenticate": 'Basic realm="taskrun-api"'}
    )


async def _method_not_allowed(
    _request: ConnexionRequest, error: MethodNotAllowed
) -> ConnexionResponse:
    return detail_response(405, str(error), headers={"Allow": error.allow})


async def _unsupported_media_type(
    _request: ConnexionRequest, error: UnsupportedMediaTypeProblem
) -> ConnexionResponse:
    return detail_response(415, str(error.detail))


def _retry_later(detail: str) -> ConnexionResponse:
    return detail_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _database_unavailable(
    _request: ConnexionRequest, error: DatabaseUnavailable
) -> ConnexionResponse:
    # The reason names the fault (an SQLite result code, a PostgreSQL SQLSTATE), no data.
    log_failure(
        logger, logging.WARNING, f"database unavailable ({error.reason})", error, with_stack=False
    )
    return _retry_later("The database is unavailable; nothing was changed. Retry later.")


async def _too_many_unfinished_bodies(
    _request: ConnexionRequest, error: TooManyUnfinishedBodies
) -> ConnexionResponse:
    log_failure(logger, logging.WARNING, "request refused", error, with_stack=False)
    return _retry_later(str(error))


async def _not_ready(_request: ConnexionRequest, error: NotReady) -> ConnexionResponse:
    # Prefect's server answers its readiness check with `message`, not `detail`.
    if error.__cause__ is None:
        logger.warning("not ready: %s", error)
    else:
        # The answer says what is missing; the log line adds what the database raised.
        log_failure(
            logger, logging.WARNING, f"not ready: {error}", error.__cause__, with_stack=False
        )
    return json_response(503, {"message": str(error)})


async def _http_exception(_request: ConnexionRequest, error: HTTPException) -> ConnexionResponse:
    # Routing outcomes: unknown path (404), wrong method (405).
    return detail_response(
        error.status_code, HTTPStatus(error.status_code).phrase, headers=dict(error.headers or {})
    )


async def _problem(_request: ConnexionRequest, error: ProblemException) -> ConnexionResponse:
    if error.status >= 500:
        log_failure(logger, logging.ERROR, f"{error.status} {error.title}", error, with_stack=False)
    headers = dict(error.headers or {})
    return detail_response(error.status, str(error.detail or error.title), headers=headers)


# Why the service cannot serve now (NotReady: the database unavailable or not migrated);
# None when it can.
ReadinessProblem = Callable[[], NotReady | None]


def _unexpected_error_handler(readiness_problem: ReadinessProblem | None) -> ErrorHandler:
    """The handler of every error no other handler takes: a 500, unless the service is not
    ready (a database without the service's tables fails with errors of its own), which is a
    503 saying what is missing, as `/api/ready` says it.
    """

    async def unexpected(_request: ConnexionRequest, error: Exception) -> ConnexionResponse:
        # The readiness check reads the database: off the event loop, and only on this path.
        problem = None if readiness_problem is None else await run_in_threadpool(readiness_problem)
        if problem is not None:
            log_failure(logger, logging.WARNING, f"not ready: {problem}", error, with_stack=False)
            return detail_response(503, str(problem))
        log_failure(logger, logging.ERROR, "unhandled error", error, with_stack=True)
        return detail_response(500, "Internal Server Error")

    return unexpected


ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    RequestValidationError: _validation,
    InvalidRequestModel: _validation,
    UnsupportedMediaTypeProblem: _unsupported_media_type,
    BadRequestProblem: _bad_request,
    Unauthorized: _unauthorized,
    MethodNotAllowed: _method_not_allowed,
    **dict.fromkeys(DETAIL_STATUSES, _detail),
    TooManyUnfinishedBodies: _too_many_unfinished_bodies,
    ClientDisconnected: _client_disconnected,
    DatabaseUnavailable: _database_unavailable,
    NotReady: _not_ready,
    HTTPException: _http_exception,
    ProblemException: _problem,
}


def register_error_handlers(
    app: FlaskApp, *, readiness_problem: ReadinessProblem | None = None
) -> None:
    """Route every exception class to its handler (the most specific class wins); what no
    other handler takes is a 500, or a 503 while `readiness_problem` finds one.
    """
    for error_class, handler in ERROR_HANDLERS.items():
        app.add_error_handler(error_class, handler)
    app.add_error_handler(Exception, _unexpected_error_handler(readiness_problem))

"""Mounting openapi.yaml on a Connexion app, with the project's validation and errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from connexion import FlaskApp
from connexion.exceptions import ResolverError
from connexion.middleware import MiddlewarePosition
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from connexion.resolver import Resolver
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from app.contract.documents import document_endpoints
from app.contract.endpoints import ReadOnlyEndpoints
from app.contract.errors import ReadinessProblem, register_error_handlers
from app.contract.middleware import (
    ApiVersionMiddleware,
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    BodyLimits,
    LineBreakPathMiddleware,
    MethodNotAllowedMiddleware,
    UnroutedRequestMiddleware,
    precedence,
)
from app.contract.observability import (
    REQUEST_ID_HEADER,
    RequestRecorder,
    acceptable_request_id,
    metrics_endpoint,
    new_request_id,
)
from app.contract.operations import prepare_operations_once
from app.contract.spec import enable_openapi_31, load_spec
from app.contract.validation import VALIDATOR_MAP
from app.observability.metrics import QueueCounter
from generated.routes import HANDLER_GROUPS, HANDLERS, Routes

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
METRICS_PATH = "/metrics"


class MissingHandlers(RuntimeError):
    """An operation of openapi.yaml has no handler method."""


def contract_middlewares(*, validate_responses: bool) -> list[type]:
    """Connexion's middleware, less what the service does otherwise or does not need.

    Left out: the Swagger UI middleware (app/contract/documents.py serves the document and
    its docs page), the security middleware (BasicAuthMiddleware decides before routing; the
    document's other alternative is anonymous access) and, unless responses are validated,
    the response validation middleware. Each one skipped is a layer less on every request.
    """
    middlewares: list[type] = [
        ServerErrorMiddleware,
        ExceptionMiddleware,
        RoutingMiddleware,
        RequestValidationMiddleware,
    ]
    if validate_responses:
        middlewares.append(BodilessHeadResponseValidation)
    return [*middlewares, LifespanMiddleware, ContextMiddleware]


class BodilessHeadResponseValidation(ResponseValidationMiddleware):  # type: ignore[misc]
    """Connexion's response validation, which HEAD answers pass by.

    A HEAD answer is its GET's headers without the body, and Connexion would validate the
    missing body against the GET's schema: every HEAD a 500.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class RoutesResolver(Resolver):  # type: ignore[misc]
    """Resolves each operationId to the method of the same name on the generated Routes."""

    def __init__(self, routes: Routes) -> None:
        super().__init__()
        self._routes = routes

    def resolve_function_from_operation_id(self, operation_id: str) -> Any:
        function = getattr(self._routes, operation_id, None)
        if function is None:
            raise ResolverError(
                f"openapi.yaml has the operation {operation_id!r} but generated/routes.py has "
                "no stub for it: run `make generate`"
            )
        return function


def ensure_every_operation_handled(groups: Mapping[str, object]) -> None:
    """Fail at start-up, naming each route stub, handler group or method the document needs
    and the service lacks.
    """
    problems = contract_problems(groups)
    if problems:
        raise MissingHandlers("; ".join(problems))


def handler_problems(
    groups: Mapping[str, object],
    *,
    handlers: Mapping[str, tuple[str, str]] = HANDLERS,
    handler_groups: Mapping[str, tuple[str, str]] = HANDLER_GROUPS,
) -> list[str]:
    """Why `groups` (a handler object by group name) cannot serve every operation of the
    route stubs (`handlers` and `handler_groups`, as generated/routes.py lists them), one
    line each: a group missing, a group no tag has, an operation without its handler method.
    """
    problems = [
        f'missing handler group: {group} ({protocol}, the operations tagged "{tag}")'
        for group, (protocol, tag) in handler_groups.items()
        if group not in groups
    ]
    problems += [
        f"handler group of no tag: {group}" for group in groups if group not in handler_groups
    ]
    problems += [
        f"missing handler: {operation_id}: {group}.{method}"
        for operation_id, (group, method) in handlers.items()
        if not callable(getattr(groups.get(group), method, None))
    ]
    return problems


def contract_problems(groups: Mapping[str, object]) -> list[str]:
    """Why the service cannot serve every operation of openapi.yaml with the handler objects
    `groups`, one line each: route stubs generated from another version of the document
    (Connexion would only find out at the first request of the operation), then what
    `groups` lacks.
    """
    documented = {
        operation["operationId"]
        for operations in load_spec()["paths"].values()
        for method, operation in operations.items()
        if method in HTTP_METHODS
    }
    problems = [
        f"no route stub for {operation_id} of openapi.yaml: run `make generate`"
        for operation_id in sorted(documented - HANDLERS.keys())
    ]
    problems += [
        f"a route stub for {operation_id}, which openapi.yaml no longer has: run `make generate`"
        for operation_id in sorted(HANDLERS.keys() - documented)
    ]
    return problems + handler_problems(groups)


def public_operations(spec: dict[str, Any]) -> dict[str, frozenset[str]]:
    """The operations that need no credentials (`security: []`): full path template ->
    their methods.
    """
    base_path = spec["servers"][0]["url"].rstrip("/")
    public = {
        base_path + path: frozenset(
            method.upper()
            for method, operation in operations.items()
            if method in HTTP_METHODS and operation.get("security") == []
        )
        for path, operations in spec["paths"].items()
    }
    return {path: methods for path, methods in public.items() if methods}


def methods_by_path(spec: dict[str, Any]) -> dict[str, frozenset[str]]:
    """Each full path template of the document, with the methods it has."""
    base_path = spec["servers"][0]["url"].rstrip("/")
    return {
        base_path + path: frozenset(
            method.upper() for method in operations if method in HTTP_METHODS
        )
        for path, operations in spec["paths"].items()
    }


@dataclass(frozen=True)
class CorsPolicy:
    """Which cross-origin browser requests may call the API ("*": any)."""

    origins: Sequence[str]
    methods: Sequence[str]
    headers: Sequence[str]


def mount_contract(
    app: FlaskApp,
    routes: Routes,
    *,
    validate_responses: bool,
    body_limits: BodyLimits,
    basic_auth: str | None,
    log_requests: bool,
    metrics_enabled: bool,
    cors: CorsPolicy | None,
    count_queue: QueueCounter | None = None,
    readiness_problem: ReadinessProblem | None = None,
) -> None:
    """Serve openapi.yaml's operations on `app`, validated against the document itself.

    With `basic_auth` ("user:password"), every path but those of the operations whose
    document says `security: []` needs those credentials. Beside the operations: the
    document and its docs page, the metrics when enabled (with the queue's sizes as
    `count_queue` finds them), a request id, a log line and metrics for every request, and
    CORS when a policy is given. An unexpected error is a 503 while `readiness_problem`
    finds one.
    """
    if validate_responses and BodilessHeadResponseValidation not in app.middleware.middlewares:
        raise ValueError("validate_responses needs contract_middlewares(validate_responses=True)")
    enable_openapi_31()
    prepare_operations_once()
    spec = load_spec()
    base_path = spec["servers"][0]["url"].rstrip("/")
    # Connexion's router tries the paths in the document's order: a literal path listed
    # after a templated one it also matches would never be reached.
    spec["paths"] = {path: spec["paths"][path] for path in sorted(spec["paths"], key=precedence)}
    app.add_api(
        spec,
        resolver=RoutesResolver(routes),
        validator_map=VALIDATOR_MAP,
        validate_responses=validate_responses,
    )
    register_error_handlers(app, readiness_problem=readiness_problem)
    # Middleware added at one position runs in the order added: the request id first, so
    # that every response carries it; CORS outside the error handling, so that error
    # responses carry its headers too.
    app.add_middleware(
        CorrelationIdMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        header_name=REQUEST_ID_HEADER,
        update_request_header=False,
        generator=new_request_id,
        validator=acceptable_request_id,
    )
    app.add_middleware(
        RequestRecorder,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        log_requests=log_requests,
        count_requests=metrics_enabled,
        metrics_path=METRICS_PATH,
    )
    if cors is not None:
        app.add_middleware(
            CORSMiddleware,
            position=MiddlewarePosition.BEFORE_EXCEPTION,
            allow_origins=cors.origins,
            allow_methods=cors.methods,
            allow_headers=cors.headers,
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(LineBreakPathMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION)
    if basic_auth:
        # Before the document is served or any route is matched: all of /api is guarded.
        app.add_middleware(
            BasicAuthMiddleware,
            position=MiddlewarePosition.BEFORE_ROUTING,
            credentials=basic_auth,
            public_operations=public_operations(spec),
        )
    paths, prefixes = document_endpoints(base_path=base_path, title=spec["info"]["title"])
    if metrics_enabled:
        paths[METRICS_PATH] = metrics_endpoint(count_queue)
    app.add_middleware(
        ReadOnlyEndpoints,
        position=MiddlewarePosition.BEFORE_ROUTING,
        paths=paths,
        prefixes=prefixes,
    )
    app.add_middleware(
        MethodNotAllowedMiddleware,
        position=MiddlewarePosition.BEFORE_ROUTING,
        methods_by_path=methods_by_path(spec),
    )
    app.add_middleware(ApiVersionMiddleware, position=MiddlewarePosition.BEFORE_VALIDATION)
    # After routing: what Connexion did not route must not reach Flask's URL map.
    app.add_middleware(UnroutedRequestMiddleware, position=MiddlewarePosition.BEFORE_VALIDATION)
    # Outside the error handlers, so that it sees (and can close after) their answers too.
    app.add_middleware(
        BodyLimitMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, limits=body_limits
    )

"""Mounting openapi.yaml on a Connexion app, with the project's validation and errors."""

from __future__ import annotations

from typing import Any

from connexion import FlaskApp
from connexion.exceptions import ResolverError
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver

from app.contract.errors import register_error_handlers
from app.contract.middleware import (
    ApiVersionMiddleware,
    BodySizeLimitMiddleware,
    LineBreakPathMiddleware,
)
from app.contract.spec import enable_openapi_31, load_spec
from app.contract.validation import VALIDATOR_MAP
from generated.routes import Routes


class MissingHandlers(RuntimeError):
    """An operation of openapi.yaml has no handler method."""


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


def ensure_every_operation_handled(routes: Routes) -> None:
    """Fail at start-up, naming each operation whose handler method is missing."""
    missing = routes.missing_handlers()
    if missing:
        raise MissingHandlers("operations without a handler: " + "; ".join(missing))


def mount_contract(
    app: FlaskApp, routes: Routes, *, validate_responses: bool, max_request_body_bytes: int
) -> None:
    """Serve openapi.yaml's operations on `app`, validated against the document itself."""
    enable_openapi_31()
    ensure_every_operation_handled(routes)
    app.add_api(
        load_spec(),
        resolver=RoutesResolver(routes),
        validator_map=VALIDATOR_MAP,
        validate_responses=validate_responses,
        # Connexion's bundled Swagger UI cannot render OpenAPI 3.1; the document is served.
        swagger_ui_options=SwaggerUIOptions(swagger_ui=False, serve_spec=True),
    )
    register_error_handlers(app)
    app.add_middleware(LineBreakPathMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(ApiVersionMiddleware, position=MiddlewarePosition.BEFORE_VALIDATION)
    app.add_middleware(
        BodySizeLimitMiddleware,
        position=MiddlewarePosition.BEFORE_VALIDATION,
        max_bytes=max_request_body_bytes,
    )

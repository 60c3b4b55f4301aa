"""Connexion's per-operation preparations, done once per operation instead of per request.

For every request, Connexion 3.3 builds anew what depends only on the operation:

- its request validation middleware, a URI parser, a parameter validator and a body
  validator (looking the media type up among the validators' patterns);
- its FlaskOperation, a FlaskDecorator, the operation's function wrapped in it again (three
  wrappers and an `inspect.signature` of the function), and another URI parser.

Here each is built at the operation's first request and kept: about a fifth of the CPU time
of a read (README, Performance). Both replace private parts of Connexion
(`RequestValidationOperation.__call__`, `FlaskOperation.fn`); like the other hooks they
refuse any Connexion but the pinned one, and check that the parts they use exist.

The function is also handed a request of its own kind (PreparedRequest): the JSON body
decoded once, by the validation that accepted it, instead of again by Flask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import flask
from connexion import utils
from connexion.apps.flask import FlaskOperation
from connexion.decorators import FlaskDecorator
from connexion.http_facts import FORM_CONTENT_TYPES
from connexion.lifecycle import WSGIRequest
from connexion.middleware.request_validation import RequestValidationOperation
from starlette.types import Receive, Scope, Send
from werkzeug.http import parse_options_header

from app.contract.spec import SUPPORTED_CONNEXION, UnsupportedConnexion
from app.contract.validation import DECODED_BODY

# Where a FlaskOperation keeps its prepared function.
_PREPARED = "_taskrun_prepared_fn"
# Where a RequestValidationOperation keeps its validators.
_VALIDATORS = "_taskrun_validators"
# Body validators kept per operation: the media type and charset come from the client, so
# only the first few combinations are kept (in practice one: application/json, utf-8).
_KEPT_BODY_VALIDATORS = 4
# A body's charset when its Content-Type declares none (RFC 8259: JSON is UTF-8).
DEFAULT_CHARSET = "utf-8"


def prepare_operations_once() -> None:
    """Make every operation prepare its validators and function once (idempotent)."""
    installed = version("connexion")
    expected_parts = (
        isinstance(vars(FlaskOperation).get("fn"), property)
        and callable(getattr(FlaskDecorator, "decorate", None))
        and isinstance(getattr(FlaskDecorator, "uri_parser", None), property)
        and all(
            callable(getattr(RequestValidationOperation, name, None))
            for name in ("extract_content_type", "validate_mime_type")
        )
        and isinstance(getattr(RequestValidationOperation, "security_query_params", None), property)
        and all(callable(getattr(WSGIRequest, name, None)) for name in ("get_body", "files"))
    )
    if installed != SUPPORTED_CONNEXION or not expected_parts:
        raise UnsupportedConnexion(
            f"app/contract/operations.py replaces parts of Connexion {SUPPORTED_CONNEXION}, "
            f"found {installed}: check FlaskOperation, FlaskDecorator and "
            "RequestValidationOperation, then update the pin"
        )
    FlaskOperation.fn = property(prepared_function)
    RequestValidationOperation.__call__ = validate_with_prepared_validators


async def validate_with_prepared_validators(
    self: RequestValidationOperation, scope: Scope, receive: Receive, send: Send
) -> None:
    """Connexion's request validation (parameters, media type, body) with validators built
    once per operation and media type.
    """
    validators: _Validators | None = self.__dict__.get(_VALIDATORS)
    if validators is None:
        validators = self.__dict__[_VALIDATORS] = _Validators(self)
    validators.parameters.validate(scope)
    # Connexion's reading of the media type: the operation's own when none is given.
    mime_type, _ = self.extract_content_type(scope["headers"])
    # Media types are case-insensitive and may have spaces before their parameters (RFC
    # 9110): `Application/JSON ; charset=utf-8` is JSON, checked and decoded like any other.
    mime_type = mime_type.strip().lower()
    self.validate_mime_type(mime_type)
    body_validator = validators.body(mime_type, declared_charset(scope["headers"]))
    if body_validator is not None:
        receive, scope = await body_validator.wrap_receive(receive, scope=scope)
    await self.next_app(scope, receive, send)


def declared_charset(headers: list[tuple[bytes, bytes]]) -> str:
    """The charset the request's Content-Type declares for its body; UTF-8 when none.

    Read as RFC 9110 writes parameters: spaces around `;`, the name in any case, the value
    quoted or not. Connexion finds the charset only when written exactly `;charset=...`.
    """
    _, parameters = parse_options_header(utils.extract_content_type(headers))
    # Charset names are case-insensitive: one body validator for every spelling.
    return parameters.get("charset", DEFAULT_CHARSET).lower()


class _Validators:
    """An operation's parameter validator, and its body validator for each media type."""

    def __init__(self, validation: RequestValidationOperation) -> None:
        operation = validation._operation
        self._validation = validation
        self._operation = operation
        self.parameters = validation._validator_map["parameter"](
            operation.parameters,
            uri_parser=self._uri_parser(),
            strict_validation=validation.strict_validation,
            security_query_params=validation.security_query_params,
        )
        self._bodies: dict[tuple[str, str], Any] = {}

    def _uri_parser(self) -> Any:
        operation = self._operation
        return operation._uri_parser_class(operation.parameters, operation.body_definition())

    def body(self, mime_type: str, encoding: str) -> Any:
        """The body validator for this media type, None when the body goes unchecked."""
        key = (mime_type, encoding)
        if key in self._bodies:
            return self._bodies[key]
        validator = self._body_validator(mime_type, encoding)
        if len(self._bodies) < _KEPT_BODY_VALIDATORS:
            self._bodies[key] = validator
        return validator

    def _body_validator(self, mime_type: str, encoding: str) -> Any:
        operation = self._operation
        schema = operation.body_schema(mime_type)
        if not schema:
            return None
        try:
            # A lookup by pattern ("application/*+json"): `.get` would skip it.
            validator_class = self._validation._validator_map["body"][mime_type]
        except KeyError:
            return None
        return validator_class(
            schema=schema,
            required=operation.request_body.get("required", False),
            nullable=utils.is_nullable(operation.body_definition(mime_type)),
            encoding=encoding,
            strict_validation=self._validation.strict_validation,
            uri_parser=self._uri_parser(),
        )


def prepared_function(operation: FlaskOperation) -> Callable[..., Any]:
    """The operation's function as Connexion decorates it, prepared at the first call."""
    prepared: Callable[..., Any] | None = operation.__dict__.get(_PREPARED)
    if prepared is None:
        # Two threads may prepare it at once; both results are alike, one is kept.
        prepared = operation.__dict__[_PREPARED] = _prepare(operation)
    return prepared


def _prepare(operation: FlaskOperation) -> Callable[..., Any]:
    decorator = FlaskDecorator(
        pythonic_params=operation.pythonic_params, jsonifier=operation.jsonifier
    )
    decorated = decorator.decorate(operation._fn)
    # The parser depends on the operation being served, known only during a request.
    uri_parsers: list[Any] = []

    @functools.wraps(operation._fn)
    def serve(*_args: Any, **_kwargs: Any) -> Any:
        # Like Connexion's wrapper: the arguments come from the request, not from Flask.
        if not uri_parsers:
            uri_parsers.append(decorator.uri_parser)
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        return decorated(
            PreparedRequest(request, uri_parser=uri_parsers[0], view_args=request.view_args)
        )

    return serve


class PreparedRequest(WSGIRequest):  # type: ignore[misc]
    """The request as Connexion hands it to an operation's function, read more directly.

    - It holds Flask's request itself rather than Flask's context-local proxy, which looks
      the request up again on each of the dozens of reads of it.
    - Its JSON body is the value the validation middleware decoded and validated, rather
      than one Flask decodes again (where their readings could differ, as for a body
      declared in a charset other than UTF-8).
    - Files are looked for only in form bodies, the only ones that can hold them.
    """

    def get_body(self) -> Any:
        scope = self.environ["asgi.scope"]
        if DECODED_BODY in scope:
            return scope[DECODED_BODY]
        return super().get_body()

    def files(self) -> dict[str, Any]:
        if self.mimetype not in FORM_CONTENT_TYPES:
            return {}
        files: dict[str, Any] = super().files()
        return files

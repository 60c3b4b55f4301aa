"""Request and response validation with JSON Schema 2020-12, the dialect of OpenAPI 3.1.

Connexion's own validators are JSON Schema Draft 4: they ignore `const` and `format: uuid`,
and report only the first error, as a 400. These replacements validate against the contract
itself, report every error with a `loc` that points at it, and are plugged in through
Connexion's public `validator_map`.

Two implementations of the same draft work together. jsonschema-rs decides whether a request
is valid: it is a few hundred times faster (a Prefect client's create body: ~3 us instead of
~1 ms) and follows the specifications more closely (ECMA-262 `$`, RFC 3339 leap seconds, ASCII
digits in UUIDs). Python's jsonschema explains a rejection: its errors keep the alternatives
an `anyOf` failed on, from which the branch the client meant is found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema_rs
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import NonConformingResponseBody
from connexion.validators import (
    AbstractRequestBodyValidator,
    FormDataValidator,
    JSONResponseBodyValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
    TextResponseBodyValidator,
)
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from starlette.types import Message, Receive, Scope

# Checks `uuid` and (with rfc3339-validator installed) `date-time`, unlike Draft 4.
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
MAX_MESSAGE_LENGTH = 300
# A JSON escape of a UTF-16 surrogate; only then can a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class RequestValidationError(Exception):
    """The request does not match the contract; answered with 422."""

    def __init__(self, errors: list[dict[str, Any]], *, request_body: Any = None) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors
        self.request_body = request_body


class CompiledSchema:
    """A schema compiled once: jsonschema-rs decides, Python's jsonschema explains."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.decider = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
        self.explainer = Draft202012Validator(schema, format_checker=FORMAT_CHECKER)

    def errors(self, instance: Any, *, prefix: list[str | int]) -> list[dict[str, Any]]:
        """The problems of `instance`, located under `prefix`; none when it is valid."""
        if self.decider.is_valid(instance):
            return []
        explained = error_items(self.explainer.iter_errors(instance), prefix=prefix)
        # Where the two disagree, jsonschema-rs is the stricter reading of the specifications.
        return explained or [
            _item_from_rs(error, prefix) for error in self.decider.iter_errors(instance)
        ]


def _item_from_rs(error: Any, prefix: list[str | int]) -> dict[str, Any]:
    keyword = error.schema_path[-1] if error.schema_path else "value_error"
    return {
        "loc": [*prefix, *error.instance_path],
        "msg": _shorten(error.message),
        "type": str(keyword),
    }


_compiled: dict[int, CompiledSchema] = {}


def compiled(schema: dict[str, Any]) -> CompiledSchema:
    """The schema compiled once per schema object, not once per request."""
    cached = _compiled.get(id(schema))
    if cached is None or cached.schema is not schema:
        cached = CompiledSchema(schema)
        _compiled[id(schema)] = cached
    return cached


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """Python's jsonschema validator of the schema (compiled once)."""
    return compiled(schema).explainer


# --- turning jsonschema errors into {loc, msg, type} items -------------------------------


def error_items(errors: Iterable[SchemaError], *, prefix: list[str | int]) -> list[dict[str, Any]]:
    """One item per problem, `loc` starting with `prefix` (e.g. ["body"])."""
    items: list[dict[str, Any]] = []
    for error in sorted(errors, key=lambda e: [str(part) for part in e.absolute_path]):
        for cause in _causes(error):
            items.extend(item for item in _items(cause, prefix=prefix) if item not in items)
    return items


def _causes(error: SchemaError) -> Iterator[SchemaError]:
    """The errors that explain `error`: inside `anyOf`, those of the branch the value meant.

    A branch that only failed because the value has another type (the `null` branch of a
    nullable field, say) is not what the client meant. Of the other branches, the one with
    the fewest and deepest errors is; when every branch failed on the type alone, the
    `anyOf` error itself is the clearest.
    """
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        yield error
        return
    branches: dict[Any, list[SchemaError]] = {}
    for sub_error in error.context:
        branches.setdefault(sub_error.schema_path[0], []).append(sub_error)
    meant = [
        branch
        for branch in branches.values()
        if not all(e.validator == "type" and not e.relative_path for e in branch)
    ]
    if not meant:
        yield error
        return
    best = min(meant, key=lambda branch: (len(branch), -max(len(e.path) for e in branch)))
    for sub_error in best:
        yield from _causes(sub_error)


def _items(error: SchemaError, *, prefix: list[str | int]) -> list[dict[str, Any]]:
    loc: list[str | int] = [*prefix, *error.absolute_path]
    instance: Any = error.instance
    if error.validator == "required":
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        return [
            {"loc": [*loc, name], "msg": "Field required", "type": "missing"}
            for name in required
            if name not in instance
        ]
    if error.validator == "additionalProperties":
        schema: Any = error.schema
        known = schema.get("properties", {})
        return [
            {
                "loc": [*loc, name],
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
            for name in instance
            if name not in known
        ]
    if error.validator in ("anyOf", "oneOf"):
        return [{"loc": loc, "msg": _type_message(error), "type": "type"}]
    return [{"loc": loc, "msg": _shorten(error.message), "type": str(error.validator)}]


def _type_message(error: SchemaError) -> str:
    """The message for an anyOf whose branches all wanted another type than the value's."""
    expected: list[str] = []
    for sub_error in error.context or ():
        wanted: Any = sub_error.validator_value
        for name in wanted if isinstance(wanted, list) else [wanted]:
            if name not in expected:
                expected.append(name)
    return _shorten(f"{error.instance!r} is not of type {', '.join(map(repr, expected))}")


def _shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[: MAX_MESSAGE_LENGTH - 1] + "…"


# --- JSON bodies ----------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is too large")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= character <= "\udfff" for character in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def _invalid_json(position: int, reason: str, *, request_body: Any) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "loc": ["body", position],
                "msg": "JSON decode error",
                "type": "json_invalid",
                "ctx": {"error": reason},
            }
        ],
        request_body=request_body,
    )


def parse_json_body(raw: bytes, *, encoding: str) -> Any:
    """The JSON value of a request body; None for an empty one.

    Stricter than `json.loads`: NaN, Infinity, numbers too large for a float and strings
    holding a lone UTF-16 surrogate (which cannot be stored as UTF-8) are all rejected.
    """
    if not raw:
        return None
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as error:
        raise _invalid_json(
            getattr(error, "start", 0),
            f"the body is not valid {encoding} text",
            request_body=raw.decode("utf-8", errors="replace"),
        ) from error
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        raise _invalid_json(error.pos, error.msg, request_body=text) from error
    except ValueError as error:
        raise _invalid_json(0, str(error), request_body=text) from error
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise _invalid_json(0, "a string holds a lone UTF-16 surrogate", request_body=None)
    return body


class JSONBodyValidator(AbstractRequestBodyValidator):  # type: ignore[misc]
    """Validates a JSON request body against its schema; replays it unchanged to the app."""

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        # Read the whole body ourselves: Connexion's version trusts Content-Length and so
        # treats a chunked body as missing.
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        body = parse_json_body(raw, encoding=self._encoding)
        # An empty body and a JSON `null` both mean "no body", as in Prefect's server.
        if body is None and self._required:
            raise RequestValidationError(
                [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
            )
        if body is not None:
            self._validate(body)
        return self._insert_messages(receive, messages=messages), _declaring_json(scope, len(raw))

    def _validate(self, body: Any) -> None:
        errors = compiled(self._schema).errors(body, prefix=["body"])
        if errors:
            raise RequestValidationError(errors, request_body=body)


def _declaring_json(scope: Scope, length: int) -> Scope:
    """The scope with the headers the application needs to read the body it was validated as.

    A body sent without Content-Type was read as JSON, as Prefect's server does for clients
    older than 3.6.19; a chunked one needs its length, which Flask reads it by.
    """
    kept = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"content-length", b"transfer-encoding")
    ]
    if not any(name == b"content-type" for name, _ in kept):
        kept.append((b"content-type", b"application/json"))
    kept.append((b"content-length", str(length).encode()))
    return {**scope, "headers": kept}


class SchemaParameterValidator(ParameterValidator):  # type: ignore[misc]
    """Validates path, query and header parameters, reporting every bad one at once."""

    def validate_request(self, request: Any) -> None:
        errors: list[dict[str, Any]] = []
        sources = {
            "path": lambda name: request.path_params.get(name.replace("-", "_")),
            "query": request.query_params.get,
            "header": request.headers.get,
        }
        for location, read in sources.items():
            for parameter in self.parameters.get(location, []):
                errors.extend(_parameter_errors(location, parameter, read(parameter["name"])))
        if errors:
            raise RequestValidationError(errors)


def _parameter_errors(location: str, parameter: dict[str, Any], value: Any) -> list[dict[str, Any]]:
    name = parameter["name"]
    if value is None:
        if parameter.get("required"):
            return [{"loc": [location, name], "msg": "Field required", "type": "missing"}]
        return []
    return compiled(parameter.get("schema", {})).errors(value, prefix=[location, name])


class SchemaResponseValidator(JSONResponseBodyValidator):  # type: ignore[misc]
    """Checks a JSON response against the contract (used by the tests, off in production)."""

    def _validate(self, body: Any) -> None:
        errors = list(validator_for(self._schema).iter_errors(body))
        if errors:
            described = "; ".join(
                f"{item['loc']}: {item['msg']}" for item in error_items(errors, prefix=["response"])
            )
            raise NonConformingResponseBody(
                detail=f"Response body does not conform to specification: {described}"
            )


VALIDATOR_MAP = {
    "parameter": SchemaParameterValidator,
    "body": MediaTypeDict(
        {
            "*/*json": JSONBodyValidator,
            "application/x-www-form-urlencoded": FormDataValidator,
            "multipart/form-data": MultiPartFormDataValidator,
        }
    ),
    "response": MediaTypeDict(
        {"*/*json": SchemaResponseValidator, "text/plain": TextResponseBodyValidator}
    ),
}

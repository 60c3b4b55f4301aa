"""Request and response validation with JSON Schema 2020-12, the dialect of OpenAPI 3.1.

Connexion's own validators are JSON Schema Draft 4: they ignore `const` and `format: uuid`,
and report only the first error, as a 400. These replacements validate against the contract
itself, report the errors with a `loc` that points at each, and are plugged in through
Connexion's public `validator_map`.

Two implementations of the same draft work together. jsonschema-rs decides whether a request
is valid: it is a few hundred times faster (a Prefect client's create body: ~3 us instead of
~1 ms) and follows the specifications more closely (ECMA-262 `$`, RFC 3339 leap seconds, ASCII
digits in UUIDs). Python's jsonschema explains a rejection (app/contract/explanation.py).

This runs on the event loop, which serves every other request of the worker meanwhile, so
each step is linear in the body and bounded: the body's size (BodyLimitMiddleware), its
nesting depth (`x-max-depth` of its schema), the errors an explanation lists and the work it
does. Bodies over INLINE_BODY_BYTES are checked, and every rejection is explained, on a
thread of its own, so that the loop can go on between the steps.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
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
from starlette.types import Receive, Scope

from app.contract.explanation import (
    error_items,
    explain,
    explainer_for,
    shorten,
    summary,
)
from app.contract.middleware import read_body

# The vendor keyword of a request body's schema: how many levels of arrays and objects the
# body may nest (the body itself is the first). JSON Schema cannot say it by itself.
MAX_DEPTH_KEYWORD = "x-max-depth"
# Smaller bodies are checked on the event loop (well under a millisecond); larger ones on the
# checking thread.
INLINE_BODY_BYTES = 64 * 1024
# A rejected body is sent back in the 422 (as Prefect's server does) up to this size.
MAX_ECHOED_BODY_BYTES = 64 * 1024
# A JSON escape of a UTF-16 surrogate; only then can a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# The scope key under which a valid JSON body travels on to the application as decoded here,
# so that the handler receives the very value that was validated (app/contract/operations.py).
DECODED_BODY = "taskrun.decoded_body"
# One thread per worker process checks large bodies and explains rejections: a burst of bad
# requests queues there instead of taking the interpreter from the event loop.
_checking_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-check")


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
        self.explainer = explainer_for(schema)

    def is_valid(self, instance: Any) -> bool:
        """Whether `instance` matches the schema (fast)."""
        return bool(self.decider.is_valid(instance))

    def explain(self, instance: Any, *, prefix: list[str | int]) -> list[dict[str, Any]]:
        """The problems of an instance the schema rejects, located under `prefix`."""
        explanation = explain(self.explainer, instance, prefix=prefix)
        if explanation.items:
            return explanation.items
        # Nothing found within the explanation's budget, or the two implementations
        # disagree (jsonschema-rs being the stricter reading of the specifications): the
        # first error jsonschema-rs finds, which it finds without looking further.
        try:
            self.decider.validate(instance)
        except jsonschema_rs.ValidationError as error:
            first = _item_from_rs(error, prefix)
            if explanation.unfinished:
                return [first, summary(0, counted_all=False, loc=prefix)]
            return [first]
        raise AssertionError("jsonschema-rs found no error in a value it rejected")

    def errors(self, instance: Any, *, prefix: list[str | int]) -> list[dict[str, Any]]:
        """The problems of `instance`, located under `prefix`; none when it is valid."""
        if self.is_valid(instance):
            return []
        return self.explain(instance, prefix=prefix)


def _item_from_rs(error: Any, prefix: list[str | int]) -> dict[str, Any]:
    keyword = error.schema_path[-1] if error.schema_path else "value_error"
    return {
        "loc": [*prefix, *error.instance_path],
        "msg": shorten(error.message),
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


def validator_for(schema: dict[str, Any]) -> Any:
    """Python's jsonschema validator of the schema (compiled once)."""
    return compiled(schema).explainer


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays and objects more than `limit` levels deep.

    A scalar nests 0 levels, `[]` one, `{"a": [1]}` two. Level by level, without recursion;
    members are looked at in C (`map(type, ...)`) and only containers are visited one by one.
    """
    level = [value] if type(value) in (list, dict) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            members = container.values() if type(container) is dict else container
            kinds = set(map(type, members))
            if list in kinds or dict in kinds:
                below.extend(member for member in members if type(member) in (list, dict))
        level = below
    return False


def depth_error(limit: int | None) -> dict[str, Any]:
    """The item of a body that nests deeper than its schema allows (or than can be read)."""
    bound = f"more than {limit} levels" if limit is not None else "too"
    return {
        "loc": ["body"],
        "msg": f"The body nests arrays and objects {bound} deep",
        "type": MAX_DEPTH_KEYWORD,
    }


# --- JSON bodies ----------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is too large")
    return value


# One decoder for every body: `json.loads` with options builds a new one per call.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _has_lone_surrogate(value: Any) -> bool:
    # Called on bodies whose depth is already bounded.
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


def _echoed(text: str) -> str | None:
    """What a 422 sends back of a body: all of it, unless it is large."""
    return text if len(text) <= MAX_ECHOED_BODY_BYTES else None


_BYTE_ORDER_MARK = "\ufeff"


def parse_json_body(raw: bytes, *, encoding: str, max_depth: int | None = None) -> Any:
    """The JSON value of a request body; None for an empty one.

    Stricter than `json.loads`: NaN, Infinity, numbers too large for a float, strings holding
    a lone UTF-16 surrogate (which cannot be stored as UTF-8) and, with `max_depth`, values
    nesting more levels than that are all rejected. A byte order mark before the value is
    ignored, as RFC 8259 lets a parser do and Prefect's server does.
    """
    if not raw:
        return None
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as error:
        raise _invalid_json(
            getattr(error, "start", 0),
            f"the body is not valid {encoding} text",
            request_body=_echoed(raw.decode("utf-8", errors="replace")),
        ) from error
    text = text.removeprefix(_BYTE_ORDER_MARK)
    try:
        body = _STRICT_DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise _invalid_json(error.pos, error.msg, request_body=_echoed(text)) from error
    except ValueError as error:
        raise _invalid_json(0, str(error), request_body=_echoed(text)) from error
    except RecursionError as error:
        # Nested deeper than the parser can go: far deeper than any schema allows.
        raise RequestValidationError([depth_error(max_depth)]) from error
    if max_depth is not None and nests_deeper_than(body, max_depth):
        raise RequestValidationError([depth_error(max_depth)])
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise _invalid_json(0, "a string holds a lone UTF-16 surrogate", request_body=None)
    return body


class JSONBodyValidator(AbstractRequestBodyValidator):  # type: ignore[misc]
    """Validates a JSON request body against its schema; replays it unchanged to the app."""

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        # Read here rather than by Connexion, whose version trusts Content-Length and so
        # treats a chunked body as missing.
        messages, raw = await read_body(receive)
        if len(raw) <= INLINE_BODY_BYTES:
            body, valid = self._decide(raw)
        else:
            body, valid = await _on_checking_thread(self._decide, raw)
        if not valid:
            schema = compiled(self._schema)
            errors = await _on_checking_thread(schema.explain, body, prefix=["body"])
            echoed = body if len(raw) <= MAX_ECHOED_BODY_BYTES else None
            raise RequestValidationError(errors, request_body=echoed)
        scope = _declaring_json(scope, len(raw), decoded=body)
        return self._insert_messages(receive, messages=messages), scope

    def _decide(self, raw: bytes) -> tuple[Any, bool]:
        """The parsed body and whether it matches the schema (rejections raise)."""
        max_depth = self._schema.get(MAX_DEPTH_KEYWORD)
        body = parse_json_body(raw, encoding=self._encoding, max_depth=max_depth)
        # An empty body and a JSON `null` both mean "no body", as in Prefect's server.
        if body is None:
            if self._required:
                raise RequestValidationError(
                    [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
                )
            return body, True
        return body, compiled(self._schema).is_valid(body)


async def _on_checking_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, run on the checking thread."""
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_checking_thread, call)


def _declaring_json(scope: Scope, length: int, *, decoded: Any) -> Scope:
    """The scope with the body as decoded, and the headers the application needs to read the
    body it was validated as.

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
    return {**scope, "headers": kept, DECODED_BODY: decoded}


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

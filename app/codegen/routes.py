"""Write generated/routes.py: one Connexion route stub per operation of openapi.yaml.

Each stub turns Connexion's validated arguments into typed values (generated request models,
UUIDs, ...), calls the handwritten handler of its operation, and serialises the handler's
response model with the status the handler chose. The handlers of one tag form a Protocol, so
mypy checks every handler's signature against the contract, and `HANDLERS` names each
operation's handler so that a missing one is reported by name.

    python -m app.codegen.routes            # write generated/routes.py
    python -m app.codegen.routes --check    # exit 1, with a diff, if it is out of date
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import keyword
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
JSON_MEDIA_TYPE = "application/json"


class SpecError(Exception):
    """The document uses something the generator cannot turn into a stub."""


@dataclass(frozen=True)
class Parameter:
    """A path or query parameter, as the stub receives it and the handler gets it."""

    name: str
    python_type: str
    required: bool
    converter: str | None  # wraps the raw value, e.g. "UUID"


@dataclass(frozen=True)
class Operation:
    """What the generator needs to know about one operation."""

    operation_id: str
    method: str
    path: str
    summary: str
    tag: str
    group: str  # the handler object, named after the operation's first tag
    handler: str
    parameters: tuple[Parameter, ...]
    body_model: str | None
    body_required: bool
    # Success statuses by the type the handler returns with them ("None" for no content);
    # empty when the operation only ever answers with an error, which its handler raises.
    success: dict[str, tuple[int, ...]] = field(default_factory=dict)


def load_operations(spec: dict[str, Any], *, naming: ModelNaming) -> list[Operation]:
    """Every operation of the document, in document order."""
    operations = []
    for path, path_item in spec.get("paths", {}).items():
        shared_parameters = path_item.get("parameters", [])
        for method in HTTP_METHODS:
            if method in path_item:
                operations.append(
                    _operation(
                        spec,
                        path,
                        method,
                        path_item[method],
                        shared_parameters=shared_parameters,
                        naming=naming,
                    )
                )
    _check_unique(operations)
    return operations


def _operation(
    spec: dict[str, Any],
    path: str,
    method: str,
    definition: dict[str, Any],
    *,
    shared_parameters: list[dict[str, Any]],
    naming: ModelNaming,
) -> Operation:
    operation_id = definition.get("operationId")
    where = f"{method.upper()} {path}"
    if not operation_id:
        raise SpecError(f"{where} has no operationId")
    tags = definition.get("tags") or []
    if not tags:
        raise SpecError(f"{where} has no tag; the first tag names its handler group")
    handler = handler_name(operation_id, path=path, method=method)
    _check_identifier(operation_id, what="operationId", where=where)
    _check_identifier(
        handler, what="handler method (the operationId without its suffix)", where=where
    )
    _check_identifier(_snake_case(tags[0]), what=f"handler group of tag {tags[0]!r}", where=where)
    # An operation's parameter replaces the path's of the same name and location.
    parameters = list(
        {
            (parameter["name"], parameter["in"]): parameter
            for parameter in (
                _resolve(spec, p) for p in [*shared_parameters, *definition.get("parameters", [])]
            )
        }.values()
    )
    body_model, body_required = _request_body(spec, definition, where=where, naming=naming)
    return Operation(
        operation_id=operation_id,
        method=method,
        path=path,
        summary=definition.get("summary", ""),
        tag=tags[0],
        group=_snake_case(tags[0]),
        handler=handler,
        parameters=tuple(
            _parameter(p, where=where) for p in parameters if p["in"] in ("path", "query")
        ),
        body_model=body_model,
        body_required=body_required,
        success=_success_responses(spec, definition, where=where, naming=naming),
    )


def handler_name(operation_id: str, *, path: str, method: str) -> str:
    """The operationId without the `_<path>_<method>` suffix FastAPI adds to Prefect's ids."""
    suffix = re.sub(r"\W", "_", path) + "_" + method
    if operation_id.endswith(suffix) and len(operation_id) > len(suffix):
        return operation_id[: -len(suffix)]
    return operation_id


def _check_identifier(name: str, *, what: str, where: str) -> None:
    # The stubs name methods and attributes after it; a leading underscore is kept for
    # the stubs' own.
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise SpecError(
            f"{where}: the {what} {name!r} is not a Python identifier (letters, digits and"
            " underscores, not a keyword, not starting with a digit or an underscore)"
        )


def _snake_case(text: str) -> str:
    return re.sub(r"\W+", "_", text.strip()).strip("_").lower()


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (possibly several in a row)."""
    while "$ref" in node:
        reference = node["$ref"]
        if not reference.startswith("#/"):
            raise SpecError(f"only local references are supported, not {reference}")
        target: Any = spec
        for part in reference[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


@dataclass(frozen=True)
class ModelNaming:
    """The class datamodel-code-generator writes for each schema of the document."""

    # Schema -> class, as `model-name-map` of [tool.datamodel-codegen] renames them.
    renames: dict[str, str]
    # The classes of generated/models.py, when it was generated (None: not looked at).
    classes: frozenset[str] | None = None
    # The document's schema names.
    schemas: frozenset[str] = frozenset()

    def class_of(self, schema: str, *, where: str) -> str:
        """The model class of `schema`: renamed, or named as the schema, or in UpperCamelCase
        (`task_note`, `Body_add_note_post` -> `TaskNote`, `BodyAddNotePost`) when that is a
        class of generated/models.py and no schema of that name exists.
        """
        if schema in self.renames or self.classes is None or schema in self.classes:
            return self.renames.get(schema, schema)
        camel = "".join(part[:1].upper() + part[1:] for part in re.split(r"[\W_]+", schema))
        if camel in self.classes and camel not in self.schemas:
            return camel
        raise SpecError(
            f"{where}: generated/models.py has no class for schema {schema!r}: name it in"
            " `model-name-map` of [tool.datamodel-codegen] in pyproject.toml"
            f" ({{{schema!r}: <its class in generated/models.py>}}), then `make generate`"
        )


def _model_name(schema: dict[str, Any], *, where: str, naming: ModelNaming) -> str:
    reference = schema.get("$ref", "")
    prefix = "#/components/schemas/"
    if not reference.startswith(prefix):
        raise SpecError(f"{where}: a JSON body must be a $ref to {prefix}<Name>")
    return f"models.{naming.class_of(reference[len(prefix) :], where=where)}"


_SCALAR_TYPES = {"boolean": "bool", "integer": "int", "number": "float", "string": "str"}


def _parameter(parameter: dict[str, Any], *, where: str) -> Parameter:
    name = parameter["name"]
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"{where}: parameter {name!r} is not a Python identifier")
    schema = parameter.get("schema", {})
    kind = schema.get("type")
    if kind == "string" and schema.get("format") == "uuid":
        python_type, converter = "UUID", "UUID"
    elif isinstance(kind, str) and kind in _SCALAR_TYPES:
        python_type, converter = _SCALAR_TYPES[kind], None
    else:
        raise SpecError(f"{where}: parameter {name!r} has a type the stubs do not support")
    return Parameter(
        name=name,
        python_type=python_type,
        required=bool(parameter.get("required")),
        converter=converter,
    )


def _request_body(
    spec: dict[str, Any], definition: dict[str, Any], *, where: str, naming: ModelNaming
) -> tuple[str | None, bool]:
    if "requestBody" not in definition:
        return None, False
    body = _resolve(spec, definition["requestBody"])
    content = body.get("content", {})
    if JSON_MEDIA_TYPE not in content:
        raise SpecError(f"{where}: the request body must be {JSON_MEDIA_TYPE}")
    schema = _schema_of(content[JSON_MEDIA_TYPE], what="the request body", where=where)
    return _model_name(schema, where=where, naming=naming), bool(body.get("required"))


def _schema_of(media_type: dict[str, Any], *, what: str, where: str) -> dict[str, Any]:
    if "schema" not in media_type:
        raise SpecError(f"{where}: {what} has no schema")
    schema: dict[str, Any] = media_type["schema"]
    return schema


def _success_responses(
    spec: dict[str, Any], definition: dict[str, Any], *, where: str, naming: ModelNaming
) -> dict[str, tuple[int, ...]]:
    by_type: dict[str, list[int]] = {}
    for status, response_or_reference in definition.get("responses", {}).items():
        if str(status).upper() == "2XX":
            raise SpecError(f"{where}: name each success status instead of {status}")
        if not str(status).isdigit() or not 200 <= int(status) < 300:
            continue
        content = _resolve(spec, response_or_reference).get("content")
        if not content:
            python_type = "None"
        elif JSON_MEDIA_TYPE in content:
            schema = _schema_of(content[JSON_MEDIA_TYPE], what=f"response {status}", where=where)
            python_type = _response_type(schema, where=where, naming=naming)
            if not python_type:
                raise SpecError(
                    f"{where}: response {status} must be a $ref, an array of $refs or a scalar type"
                )
        else:
            raise SpecError(f"{where}: response {status} must be {JSON_MEDIA_TYPE} or empty")
        by_type.setdefault(python_type, []).append(int(status))
    return {python_type: tuple(sorted(statuses)) for python_type, statuses in by_type.items()}


def _response_type(schema: dict[str, Any], *, where: str, naming: ModelNaming) -> str:
    """The Python type of a JSON response body; empty when the stubs cannot return it."""
    if "$ref" in schema:
        return _model_name(schema, where=where, naming=naming)
    if schema.get("type") == "array" and "$ref" in schema.get("items", {}):
        return f"list[{_model_name(schema['items'], where=where, naming=naming)}]"
    kind = schema.get("type")
    return _SCALAR_TYPES.get(kind, "") if isinstance(kind, str) else ""


def _check_unique(operations: list[Operation]) -> None:
    seen: dict[str, str] = {}
    for operation in operations:
        key = f"{operation.group}.{operation.handler}"
        if operation.operation_id in seen.values() or key in seen:
            raise SpecError(f"two operations share the handler or operationId {key}")
        seen[key] = operation.operation_id


# --- rendering --------------------------------------------------------------------------

_HEADER = '''\
# generated by app/codegen/routes.py from openapi.yaml: do not edit; run `make generate`.
"""Route stubs: one method per operationId, each calling its handler with typed arguments."""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, NoReturn, Protocol, TypedDict, TypeVar
from uuid import UUID

from connexion.lifecycle import ConnexionResponse
from pydantic import BaseModel, ValidationError

from generated import models

_Model = TypeVar("_Model", bound=BaseModel)
_Body = TypeVar("_Body")


class Serialized(Generic[_Body]):
    """A response body a handler serialised itself: the JSON of a `_Body`, sent as it is."""

    __slots__ = ("content",)

    def __init__(self, content: bytes) -> None:
        self.content = content


class InvalidRequestModel(Exception):
    """A body that passed the JSON Schema check but not its generated model."""

    def __init__(self, errors: list[dict[str, Any]], request_body: Any) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors
        self.request_body = request_body


def _request_model(model: type[_Model], body: Any) -> _Model:
    """The body as its generated model; errors are located under "body" like the schema's."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        errors = [
            {"loc": ["body", *item["loc"]], "msg": item["msg"], "type": item["type"]}
            for item in error.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise InvalidRequestModel(errors, body) from error


def _json(result: object) -> str:
    """Compact JSON of a model, a list of models, or a JSON scalar."""
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    if isinstance(result, list):
        return "[" + ",".join(_json(item) for item in result) + "]"
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


def _response(result: object, status: int) -> ConnexionResponse:
    """The handler's result as compact JSON with the status it chose (no body for None)."""
    if result is None:
        return ConnexionResponse(status_code=status)
    if isinstance(result, Serialized):
        return ConnexionResponse(
            status_code=status, body=result.content, content_type="application/json"
        )
    return ConnexionResponse(
        status_code=status, body=_json(result), content_type="application/json"
    )
'''


def render(operations: list[Operation]) -> str:
    """The source of generated/routes.py (before formatting)."""
    groups: dict[str, list[Operation]] = {}
    for operation in operations:
        groups.setdefault(operation.group, []).append(operation)
    parts = [_HEADER]
    parts.extend(_render_protocol(group, members) for group, members in sorted(groups.items()))
    parts.append(_render_handler_groups(groups))
    parts.append(_render_routes(groups, operations))
    parts.append(_render_handler_index(groups, operations))
    return "\n\n".join(parts)


def protocol_name(group: str) -> str:
    """`task_runs` -> `TaskRunsOperations`, what a handler class of that group implements."""
    return "".join(word.capitalize() for word in group.split("_")) + "Operations"


def _return_type(operation: Operation) -> str:
    if not operation.success:
        return "NoReturn"
    alternatives = []
    for python_type, statuses in operation.success.items():
        literal = ", ".join(str(status) for status in statuses)
        # A handler may answer with the body's JSON already made (`Serialized`).
        body = python_type
        if python_type != "None":
            body = f"{python_type} | Serialized[{python_type}]"
        alternatives.append(f"tuple[{body}, Literal[{literal}]]")
    return " | ".join(alternatives)


def _handler_parameters(operation: Operation) -> list[str]:
    parameters = [
        f"{p.name}: {p.python_type}" if p.required else f"{p.name}: {p.python_type} | None = None"
        for p in operation.parameters
    ]
    if operation.body_model:
        optional = "" if operation.body_required else " | None = None"
        parameters.append(f"body: {operation.body_model}{optional}")
    return parameters


def _render_protocol(group: str, operations: list[Operation]) -> str:
    lines = [
        f"class {protocol_name(group)}(Protocol):",
        f'    """The handlers of the operations tagged "{operations[0].tag}"."""',
    ]
    for operation in operations:
        parameters = _handler_parameters(operation)
        signature = ", ".join(["self", "*", *parameters] if parameters else ["self"])
        lines += [
            "",
            f"    def {operation.handler}({signature}) -> {_return_type(operation)}:",
            f'        """{operation.method.upper()} {operation.path}: {operation.summary}."""',
            "        ...",
        ]
    return "\n".join(lines)


def _stub_parameters(operation: Operation) -> list[str]:
    # Connexion passes path and query values as it parsed them, and the JSON body as a dict.
    parameters = [
        f"{p.name}: {'str' if p.converter else p.python_type}"
        + ("" if p.required else " | None = None")
        for p in operation.parameters
    ]
    if operation.body_model:
        parameters.append(
            "body: dict[str, Any]"
            if operation.body_required
            else "body: dict[str, Any] | None = None"
        )
    return parameters


def _stub_arguments(operation: Operation) -> list[str]:
    arguments = []
    for p in operation.parameters:
        value = p.name
        if p.converter:
            value = f"{p.converter}({p.name})"
            if not p.required:
                value = f"None if {p.name} is None else {value}"
        arguments.append(f"{p.name}={value}")
    if operation.body_model:
        value = f"_request_model({operation.body_model}, body)"
        if not operation.body_required:
            value = f"None if body is None else {value}"
        arguments.append(f"body={value}")
    return arguments


def _render_handler_groups(groups: dict[str, list[Operation]]) -> str:
    lines = [
        "class HandlerGroups(TypedDict):",
        '    """The handler object of each tag, under the name Routes takes it by."""',
        "",
        *(f"    {group}: {protocol_name(group)}" for group in sorted(groups)),
    ]
    return "\n".join(lines)


def _render_routes(groups: dict[str, list[Operation]], operations: list[Operation]) -> str:
    init_parameters = ", ".join(f"{group}: {protocol_name(group)}" for group in sorted(groups))
    lines = [
        "class Routes:",
        '    """One method per operationId; Connexion dispatches each operation to its method."""',
        "",
        f"    def __init__(self, *, {init_parameters}) -> None:",
        *(f"        self._{group} = {group}" for group in sorted(groups)),
        "",
    ]
    for operation in operations:
        # Keyword-only, as Connexion passes them: an optional parameter may come before a
        # required one (a query parameter before the body) in any order the document has.
        parameters = _stub_parameters(operation)
        signature = ", ".join(["self", "*", *parameters] if parameters else ["self"])
        arguments = ", ".join(_stub_arguments(operation))
        call = f"self._{operation.group}.{operation.handler}({arguments})"
        body = (
            [f"        result, status = {call}", "        return _response(result, status)"]
            if operation.success
            else [f"        {call}  # documents no success: the handler raises"]
        )
        lines += [
            "",
            f"    def {operation.operation_id}({signature}) -> ConnexionResponse:",
            f'        """{operation.method.upper()} {operation.path}: {operation.summary}."""',
            *body,
        ]
    return "\n".join(lines)


def _render_handler_index(groups: dict[str, list[Operation]], operations: list[Operation]) -> str:
    tags = {group: members[0].tag for group, members in groups.items()}
    lines = [
        "# operationId -> (handler group, handler method), for the check that names a missing one.",
        "HANDLERS: dict[str, tuple[str, str]] = {",
        *(f"    {o.operation_id!r}: ({o.group!r}, {o.handler!r})," for o in operations),
        "}",
        "# handler group -> (the Protocol it implements, the tag of its operations).",
        "HANDLER_GROUPS: dict[str, tuple[str, str]] = {",
        *(f"    {g!r}: ({protocol_name(g)!r}, {tags[g]!r})," for g in sorted(groups)),
        "}",
        "",
    ]
    return "\n".join(lines)


def format_source(source: str, *, filename: str) -> str:
    """Format with the project's pinned ruff: the bytes do not depend on the layout above."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", filename, "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SpecError(f"ruff could not format the generated stubs:\n{result.stderr}")
    return result.stdout


def model_name_map(pyproject: Path) -> dict[str, str]:
    """The schema-to-class renames datamodel-code-generator applies (from pyproject.toml)."""
    settings = tomllib.loads(pyproject.read_text())["tool"]["datamodel-codegen"]
    names: dict[str, str] = json.loads(settings.get("model-name-map", "{}"))
    return names


def generate(spec_path: Path, *, pyproject: Path, output: Path) -> str:
    """The formatted source of the route stubs for the document at `spec_path`."""
    spec = yaml.safe_load(spec_path.read_text())
    naming = ModelNaming(
        renames=model_name_map(pyproject),
        classes=model_classes(output.parent / "models.py"),
        schemas=frozenset(spec.get("components", {}).get("schemas", {})),
    )
    operations = load_operations(spec, naming=naming)
    return format_source(render(operations), filename=str(output))


def model_classes(models: Path) -> frozenset[str] | None:
    """The classes generated/models.py defines; None when it has not been generated."""
    if not models.exists():
        return None
    tree = ast.parse(models.read_text())
    return frozenset(node.name for node in tree.body if isinstance(node, ast.ClassDef))


def main(argv: list[str] | None = None) -> int:
    """Write the stubs, or with --check report whether the written ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("openapi.yaml"))
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--output", type=Path, default=Path("generated/routes.py"))
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    arguments = parser.parse_args(argv)
    try:
        source = generate(arguments.spec, pyproject=arguments.pyproject, output=arguments.output)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    current = arguments.output.read_text() if arguments.output.exists() else ""
    if arguments.check:
        if current == source:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            source.splitlines(keepends=True),
            fromfile=f"{arguments.output} (committed)",
            tofile=f"{arguments.output} (from {arguments.spec})",
        )
        sys.stderr.writelines(diff)
        print(f"{arguments.output} is out of date: run `make generate`", file=sys.stderr)
        return 1
    if current != source:
        arguments.output.write_text(source)
        print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""asyncapi.yaml, the contract of the websocket channels: loaded with the schemas it takes from
openapi.yaml, and the validators of the frames the service receives.

    python -m app.contract.asyncapi --check SCHEMA   # fail unless the document is valid
        AsyncAPI 3.0 (SCHEMA: the AsyncAPI 3.0.0 JSON Schema), every reference resolves, and
        its channels and messages are the ones the service serves
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

from app.contract.spec import SPEC_PATH, load_spec
from app.contract.validation import (
    MAX_DEPTH_KEYWORD,
    compiled,
    depth_error,
    nests_deeper_than,
)

ASYNCAPI_PATH = SPEC_PATH.with_name("asyncapi.yaml")
OPENAPI_REFERENCE = "openapi.yaml#/components/schemas/"
LOCAL_SCHEMA = "#/components/schemas/"


class ContractError(RuntimeError):
    """asyncapi.yaml is not what the service serves, or cannot be read."""


@dataclass(frozen=True)
class Channel:
    """One channel: its address under /api and the messages it receives, by name."""

    address: str
    received: frozenset[str]
    sent: frozenset[str]


def load_document(path: Path = ASYNCAPI_PATH) -> dict[str, Any]:
    """The document, with the schemas it refers to in openapi.yaml copied in as its own."""
    return copy.deepcopy(_bundled(path))


@cache
def _bundled(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    for name, schema in load_spec()["components"]["schemas"].items():
        if name in schemas:
            raise ContractError(f"asyncapi.yaml and openapi.yaml both define the schema {name}")
        schemas[name] = schema
    bundled: dict[str, Any] = _localised(document)
    return bundled


def _localised(node: Any) -> Any:
    """`node` with every reference into openapi.yaml's schemas made a local one."""
    if isinstance(node, dict):
        return {
            key: (
                LOCAL_SCHEMA + value.removeprefix(OPENAPI_REFERENCE)
                if key == "$ref" and isinstance(value, str) and value.startswith(OPENAPI_REFERENCE)
                else _localised(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_localised(item) for item in node]
    return node


def resolve(document: dict[str, Any], reference: str) -> Any:
    """The node a local reference (`#/a/b`) points at."""
    if not reference.startswith("#/"):
        raise ContractError(f"cannot resolve {reference!r}: only local references remain")
    node: Any = document
    for part in reference[2:].split("/"):
        try:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        except (KeyError, TypeError) as error:
            raise ContractError(f"{reference!r} points at nothing") from error
    return node


def channels(document: dict[str, Any]) -> dict[str, Channel]:
    """Every channel of the document, by address, with its received and sent message names."""
    found: dict[str, dict[str, set[str]]] = {}
    for operation in document.get("operations", {}).values():
        channel = resolve(document, operation["channel"]["$ref"])
        directions = found.setdefault(channel["address"], {"receive": set(), "send": set()})
        for message in operation.get("messages", []):
            directions[operation["action"]].add(_message(document, message)["name"])
    return {
        address: Channel(address, frozenset(d["receive"]), frozenset(d["send"]))
        for address, d in found.items()
    }


def _message(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


class FrameValidator:
    """Checks received frames against the payload schemas of asyncapi.yaml's messages."""

    def __init__(self, document: dict[str, Any]) -> None:
        components = document["components"]
        self._schemas: dict[str, dict[str, Any]] = {}
        self._max_depths: dict[str, int | None] = {}
        for message in components["messages"].values():
            payload = message["payload"]
            # The payload's own references resolve against the document's components.
            self._schemas[message["name"]] = {**payload, "components": components}
            self._max_depths[message["name"]] = _message(document, payload).get(MAX_DEPTH_KEYWORD)

    def errors(self, message: str, frame: Any) -> list[dict[str, Any]]:
        """The problems of `frame` as the message named `message`; none when it is one."""
        max_depth = self._max_depths[message]
        if max_depth is not None and nests_deeper_than(frame, max_depth):
            return [{**depth_error(max_depth), "loc": [message]}]
        return compiled(self._schemas[message]).errors(frame, prefix=[message])


@cache
def frame_validator() -> FrameValidator:
    """The validator of the frames of asyncapi.yaml (built once)."""
    return FrameValidator(load_document())


# --- the check of `make check` ---------------------------------------------------------


def check(document_path: Path, meta_schema_path: Path, served: dict[str, Channel]) -> list[str]:
    """What is wrong with the document: not AsyncAPI 3.0, a dangling reference, or channels
    and messages other than those the service serves.
    """
    raw = yaml.safe_load(document_path.read_text(encoding="utf-8"))
    meta_schema = json.loads(meta_schema_path.read_text(encoding="utf-8"))
    problems = [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(document)'}: {error.message}"
        for error in Draft7Validator(meta_schema).iter_errors(raw)
    ]
    if problems:
        return problems
    document = load_document(document_path)
    problems.extend(_dangling_references(document, document))
    documented = channels(document)
    for address in sorted(set(documented) | set(served)):
        problems.extend(_compare_channel(address, documented.get(address), served.get(address)))
    return problems


def _dangling_references(document: dict[str, Any], node: Any) -> list[str]:
    problems: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                try:
                    resolve(document, value)
                except ContractError as error:
                    problems.append(str(error))
            else:
                problems.extend(_dangling_references(document, value))
    elif isinstance(node, list):
        for item in node:
            problems.extend(_dangling_references(document, item))
    return problems


def _compare_channel(address: str, documented: Channel | None, served: Channel | None) -> list[str]:
    if documented is None:
        return [f"{address}: served, but not a channel of asyncapi.yaml"]
    if served is None:
        return [f"{address}: a channel of asyncapi.yaml that the service does not serve"]
    problems = []
    for direction, in_document, in_code in (
        ("receives", documented.received, served.received),
        ("sends", documented.sent, served.sent),
    ):
        for name in sorted(in_document - in_code):
            problems.append(
                f"{address}: the document says it {direction} {name!r}; the code does not"
            )
        for name in sorted(in_code - in_document):
            problems.append(
                f"{address}: the code {direction} {name!r}; the document does not say so"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check asyncapi.yaml against the AsyncAPI 3.0 schema and against the service."""
    from app.contract.websockets import SERVED_CHANNELS  # noqa: PLC0415 - the check's subject

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, required=True, metavar="SCHEMA")
    parser.add_argument("--document", type=Path, default=ASYNCAPI_PATH)
    arguments = parser.parse_args(argv)
    problems = check(arguments.document, arguments.check, SERVED_CHANNELS)
    for problem in problems:
        print(f"asyncapi.yaml: {problem}", file=sys.stderr)
    if not problems:
        print(f"{arguments.document.name}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

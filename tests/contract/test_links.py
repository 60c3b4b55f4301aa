"""The document's links let the stateful fuzzer walk a run's whole life.

The list of a run's states links nowhere: an operation with links and no path parameter is
where the fuzzer starts its walks, and a walk that starts from a random run id finds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
CREATE = "create_task_run_task_runs__post"
SET_STATE = "set_task_run_state_task_runs__id__set_state_post"
READ_STATES = "read_task_run_states_task_run_states__get"
RENAME = "update_task_run_task_runs__id__patch"
DELETE = "delete_task_run_task_runs__id__delete"
READ = "read_task_run_task_runs__id__get"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: operation
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }


def resolved(spec: dict[str, Any], node: dict[str, Any], section: str) -> dict[str, Any]:
    """`node`, or the component of `section` it refers to."""
    if "$ref" not in node:
        return node
    component: dict[str, Any] = spec["components"][section][node["$ref"].rsplit("/", 1)[1]]
    return component


def links_of(spec: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    """Every link of the operation's successful answers, references resolved."""
    return [
        resolved(spec, link, "links")
        for status, response in operation["responses"].items()
        if status.startswith("2")
        for link in response.get("links", {}).values()
    ]


def linked(spec: dict[str, Any], source: str) -> set[str]:
    return {link["operationId"] for link in links_of(spec, operations(spec)[source])}


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (CREATE, SET_STATE),
        (SET_STATE, READ_STATES),
        (SET_STATE, RENAME),
        (RENAME, DELETE),
        (DELETE, READ),
        (DELETE, READ_STATES),
    ],
)
def test_each_step_of_a_runs_life_links_to_the_next(source: str, target: str) -> None:
    assert target in linked(document(), source)


def test_every_link_names_an_operation_and_fills_each_of_its_parameters() -> None:
    spec = document()
    by_id = operations(spec)
    for source, operation in by_id.items():
        for link in links_of(spec, operation):
            target = by_id[link["operationId"]]
            names = set()
            for reference in target.get("parameters", []):
                parameter = resolved(spec, reference, "parameters")
                names.add(("header." if parameter["in"] == "header" else "") + parameter["name"])
            assert set(link.get("parameters", {})) == names, (source, link["operationId"])


def test_links_from_answers_without_a_body_take_the_run_from_the_request() -> None:
    spec = document()
    for source in (RENAME, DELETE):
        for link in links_of(spec, operations(spec)[source]):
            values = [v for k, v in link["parameters"].items() if not k.startswith("header.")]
            assert values, link
            assert all(value.startswith("$request.") for value in values), link

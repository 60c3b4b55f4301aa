"""The route-stub generator: deterministic, current, and loud about what it cannot do."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from app.codegen import routes as generator
from app.contract.api import handler_problems

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi.yaml"
PYPROJECT = ROOT / "pyproject.toml"
COMMITTED = ROOT / "generated" / "routes.py"


def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return document


def write_spec(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "openapi.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def import_generated(source: str, directory: Path) -> ModuleType:
    """Import generated route stubs written to `directory` as a throw-away module."""
    path = directory / "routes_under_test.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location("routes_under_test", path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def generated_handler_problems(module: ModuleType, groups: dict[str, object]) -> list[str]:
    """The handler check against the route stubs of `module`."""
    return handler_problems(groups, handlers=module.HANDLERS, handler_groups=module.HANDLER_GROUPS)


def complete_handlers(module: ModuleType, **groups: object) -> dict[str, object]:
    """A handler object for every group: the given ones, and others that have every method."""

    class EveryMethod:
        def __getattr__(self, name: str) -> Any:
            return lambda **_: (None, 204)

    everything = {group: EveryMethod() for group, _ in module.HANDLERS.values()}
    return everything | groups


@pytest.mark.parametrize(
    ("operation_id", "path", "method", "expected"),
    [
        ("create_task_run_task_runs__post", "/task_runs/", "post", "create_task_run"),
        ("read_task_run_task_runs__id__get", "/task_runs/{id}", "get", "read_task_run"),
        (
            "set_state_task_runs__id__set_state_post",
            "/task_runs/{id}/set_state",
            "post",
            "set_state",
        ),
        ("plainName", "/things/", "get", "plainName"),
        ("_task_runs__post", "/task_runs/", "post", "_task_runs__post"),
    ],
)
def test_handler_names_drop_fastapis_suffix(
    operation_id: str, path: str, method: str, expected: str
) -> None:
    assert generator.handler_name(operation_id, path=path, method=method) == expected


def test_committed_stubs_are_what_the_contract_generates() -> None:
    assert generator.generate(SPEC, pyproject=PYPROJECT, output=COMMITTED) == COMMITTED.read_text()


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generator.generate(SPEC, pyproject=PYPROJECT, output=COMMITTED)
    second = generator.generate(write_spec(tmp_path, spec()), pyproject=PYPROJECT, output=COMMITTED)

    assert first == second


def test_check_mode_fails_with_a_diff_when_the_contract_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = spec()
    changed["paths"]["/task_runs/{id}"]["get"]["summary"] = "Fetch Task Run"
    spec_path = write_spec(tmp_path, changed)
    arguments = [
        "--spec",
        str(spec_path),
        "--pyproject",
        str(PYPROJECT),
        "--output",
        str(COMMITTED),
    ]

    assert generator.main([*arguments, "--check"]) == 1
    assert "Fetch Task Run" in capsys.readouterr().err
    assert generator.main(["--check"]) == 0


def test_models_check_fails_when_a_description_changed(tmp_path: Path) -> None:
    changed = spec()
    task_key = changed["components"]["schemas"]["TaskRunCreate"]["properties"]["task_key"]
    task_key["description"] = "Another description."
    spec_path = write_spec(tmp_path, changed)
    codegen = Path(sys.executable).parent / "datamodel-codegen"

    result = subprocess.run(
        [str(codegen), "--check", "--input", str(spec_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "Another description." in result.stdout + result.stderr


def test_a_new_operation_gets_a_stub_and_its_missing_handler_is_named(tmp_path: Path) -> None:
    changed = spec()
    read = changed["paths"]["/task_runs/{id}"]["get"]
    archive = copy.deepcopy(read)
    archive.update(operationId="archive_task_run_task_runs__id__put", summary="Archive Task Run")
    archive["responses"] = {"204": {"description": "Archived."}}
    changed["paths"]["/task_runs/{id}"]["put"] = archive
    source = generator.generate(
        write_spec(tmp_path, changed), pyproject=PYPROJECT, output=COMMITTED
    )

    module = import_generated(source, tmp_path)

    assert "def archive_task_run(self, *, id: UUID) -> tuple[None, Literal[204]]" in source

    class AllButArchive:
        def __getattr__(self, name: str) -> Any:
            if name == "archive_task_run":
                raise AttributeError(name)
            return lambda **_: (None, 204)

    groups = complete_handlers(module, task_runs=AllButArchive())
    assert generated_handler_problems(module, groups) == [
        "missing handler: archive_task_run_task_runs__id__put: task_runs.archive_task_run"
    ]


def test_a_new_tag_gets_a_handler_group_and_its_absence_is_named(tmp_path: Path) -> None:
    changed = spec()
    read = changed["paths"]["/task_runs/{id}"]["get"]
    widget = copy.deepcopy(read)
    widget.update(operationId="read_widget_widgets__id__get", summary="Read Widget")
    widget["tags"] = ["Widgets"]
    changed["paths"]["/widgets/{id}"] = {"get": widget}
    source = generator.generate(
        write_spec(tmp_path, changed), pyproject=PYPROJECT, output=COMMITTED
    )

    module = import_generated(source, tmp_path)
    groups = complete_handlers(module)
    del groups["widgets"]

    assert "widgets: WidgetsOperations" in source
    assert generated_handler_problems(module, groups) == [
        'missing handler group: widgets (WidgetsOperations, the operations tagged "Widgets")',
        "missing handler: read_widget_widgets__id__get: widgets.read_widget",
    ]


def test_a_handler_group_of_no_tag_is_named(tmp_path: Path) -> None:
    module = import_generated(COMMITTED.read_text(), tmp_path)
    groups = complete_handlers(module, gadgets=object())

    assert generated_handler_problems(module, groups) == ["handler group of no tag: gadgets"]


def test_an_optional_query_parameter_may_come_before_the_body(tmp_path: Path) -> None:
    changed = spec()
    create = changed["paths"]["/task_runs/"]["post"]
    create["parameters"] = [
        {"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean"}}
    ]
    source = generator.generate(
        write_spec(tmp_path, changed), pyproject=PYPROJECT, output=COMMITTED
    )

    module = import_generated(source, tmp_path)

    received: dict[str, Any] = {}

    class Handlers:
        def create_task_run(self, **arguments: Any) -> Any:
            received.update(arguments)
            return None, 201

    routes = module.Routes(**complete_handlers(module, task_runs=Handlers()))
    routes.create_task_run_task_runs__post(body={"task_key": "k", "dynamic_key": "0"})
    assert received["dry_run"] is None
    assert received["body"].task_key == "k"


def test_a_list_of_models_is_a_typed_response(tmp_path: Path) -> None:
    module = import_generated(COMMITTED.read_text(), tmp_path)
    state = {"id": "0197f5a8-7c2b-7d4e-9a1b-2c3d4e5f6a7b", "type": "PENDING"}

    class States:
        def read_task_run_states(self, **_: Any) -> Any:
            return [module.models.State.model_validate(state)] * 2, 200

    routes = module.Routes(**complete_handlers(module, task_run_states=States()))
    response = routes.read_task_run_states_task_run_states__get(task_run_id=state["id"])

    assert (
        "tuple[list[models.State] | Serialized[list[models.State]], Literal[200]]"
        in COMMITTED.read_text()
    )
    assert response.status_code == 200
    assert [item["type"] for item in json.loads(response.body)] == ["PENDING", "PENDING"]


def test_a_body_the_handler_serialised_is_sent_as_it_is(tmp_path: Path) -> None:
    module = import_generated(COMMITTED.read_text(), tmp_path)
    made = b'[{"id":"0197f5a8-7c2b-7d4e-9a1b-2c3d4e5f6a7b", "type":"PENDING"}]'

    class States:
        def read_task_run_states(self, **_: Any) -> Any:
            return module.Serialized(made), 200

    routes = module.Routes(**complete_handlers(module, task_run_states=States()))
    response = routes.read_task_run_states_task_run_states__get(
        task_run_id="0197f5a8-7c2b-7d4e-9a1b-2c3d4e5f6a7b"
    )

    assert response.status_code == 200
    assert response.body == made
    assert response.content_type == "application/json"


def test_stubs_convert_arguments_and_serialise_results(tmp_path: Path) -> None:
    module = import_generated(COMMITTED.read_text(), tmp_path)
    received: dict[str, Any] = {}

    class Handlers:
        def create_task_run(self, *, body: Any) -> Any:
            received["body"] = body
            return None, 204

        def read_task_run(self, *, id: Any) -> Any:
            received["id"] = id
            return module.models.HTTPError(detail="x"), 200

    routes = module.Routes(**complete_handlers(module, task_runs=Handlers()))
    read = routes.read_task_run_task_runs__id__get(id="6b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b2")
    created = routes.create_task_run_task_runs__post(body={"task_key": "t", "dynamic_key": "d"})

    assert str(received["id"]) == "6b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b2"
    assert type(received["id"]).__name__ == "UUID"
    assert received["body"].task_key == "t"
    assert (read.status_code, read.body, read.content_type) == (
        200,
        '{"detail":"x"}',
        "application/json",
    )
    assert (created.status_code, created.body) == (204, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["paths"]["/task_runs/"]["post"].pop("operationId"), "has no operationId"),
        (lambda d: d["paths"]["/task_runs/"]["post"].pop("tags"), "has no tag"),
        (
            lambda d: d["paths"]["/task_runs/"]["post"]["requestBody"]["content"].update(
                {"application/json": {"schema": {"type": "object"}}}
            ),
            r"must be a \$ref",
        ),
        (
            lambda d: d["components"]["parameters"]["TaskRunId"]["schema"].update(type="array"),
            "has a type the stubs do not support",
        ),
        (
            lambda d: d["paths"]["/task_run_states/"]["get"]["responses"]["200"]["content"][
                "application/json"
            ]["schema"].update(items={"type": "object"}),
            r"must be a \$ref, an array of \$refs or a scalar type",
        ),
        (
            lambda d: d["paths"]["/task_runs/{id}"]["get"]["responses"]["200"].update(
                {"content": {"text/plain": {"schema": {"type": "string"}}}}
            ),
            "must be application/json or empty",
        ),
        (
            lambda d: d["components"]["parameters"]["TaskRunId"]["schema"].update(
                type=["string", "null"]
            ),
            "has a type the stubs do not support",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"]["responses"]["200"]["content"][
                "application/json"
            ]["schema"].update(type=["integer", "null"]),
            r"must be a \$ref, an array of \$refs or a scalar type",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"]["responses"]["200"]["content"][
                "application/json"
            ].pop("schema"),
            "response 200 has no schema",
        ),
        (
            lambda d: d["paths"]["/task_runs/"]["post"]["requestBody"]["content"][
                "application/json"
            ].pop("schema"),
            "the request body has no schema",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"]["responses"].update(
                {"2XX": {"description": "Any success."}}
            ),
            "name each success status instead of 2XX",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"].update(operationId="count-runs"),
            "the operationId 'count-runs' is not a Python identifier",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"].update(operationId="_count"),
            "the operationId '_count' is not a Python identifier",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"].update(tags=["Import"]),
            "the handler group of tag 'Import' 'import' is not a Python identifier",
        ),
        (
            lambda d: d["paths"]["/task_runs/count"]["post"].update(tags=["2FA"]),
            "the handler group of tag '2FA' '2fa' is not a Python identifier",
        ),
    ],
)
def test_unsupported_contracts_are_named(change: Any, message: str) -> None:
    document = spec()
    change(document)

    with pytest.raises(generator.SpecError, match=message):
        generator.load_operations(document, naming=generator.ModelNaming(renames={}))


def test_an_operations_parameter_replaces_the_paths_of_the_same_name(tmp_path: Path) -> None:
    changed = spec()
    changed["paths"]["/task_runs/{id}/set_state"]["parameters"] = [
        {"$ref": "#/components/parameters/TaskRunId"}
    ]
    source = generator.generate(
        write_spec(tmp_path, changed), pyproject=PYPROJECT, output=COMMITTED
    )

    assert source == COMMITTED.read_text()


def test_a_schema_is_found_under_the_class_name_the_model_generator_gave_it(
    tmp_path: Path,
) -> None:
    changed = spec()
    schemas = changed["components"]["schemas"]
    schemas["task_run_note"] = schemas.pop("TaskRunUpdate")
    update = changed["paths"]["/task_runs/{id}"]["patch"]["requestBody"]["content"]
    update["application/json"]["schema"]["$ref"] = "#/components/schemas/task_run_note"
    models = COMMITTED.with_name("models.py").read_text()
    (tmp_path / "models.py").write_text(
        models.replace("class TaskRunUpdate(", "class TaskRunNote(")
    )

    source = generator.generate(
        write_spec(tmp_path, changed), pyproject=PYPROJECT, output=tmp_path / "routes.py"
    )

    assert "body: models.TaskRunNote" in source


def test_a_schema_without_its_class_is_named_with_the_setting_that_names_it(
    tmp_path: Path,
) -> None:
    changed = spec()
    models = COMMITTED.with_name("models.py").read_text()
    (tmp_path / "models.py").write_text(models.replace("class TaskRunUpdate(", "class Renamed("))

    with pytest.raises(
        generator.SpecError, match=r"no class for schema 'TaskRunUpdate'.*model-name-map"
    ):
        generator.generate(
            write_spec(tmp_path, changed), pyproject=PYPROJECT, output=tmp_path / "routes.py"
        )

"""Connexion's middleware, trimmed: what each left-out layer did still happens elsewhere."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from connexion import FlaskApp
from connexion.decorators import FlaskDecorator
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from starlette.testclient import TestClient

from app.contract import operations
from app.contract.api import contract_middlewares, mount_contract
from app.contract.spec import UnsupportedConnexion
from app.db.migrate import upgrade
from app.handlers.root import RootHandlers
from app.main import create_app, database_of
from app.services import task_run_queries, task_runs
from app.settings import Settings

GOLDEN_TASK_RUN = Path(__file__).with_name("golden") / "task_run.json"


def _served(tmp_path: Path, **settings: Any) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'stack.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, **settings))
    try:
        with app.test_client() as client:
            yield client
    finally:
        database_of(app).dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[TestClient]:
    yield from _served(tmp_path)


@pytest.fixture
def served_with_auth(tmp_path: Path) -> Iterator[TestClient]:
    yield from _served(tmp_path, api_auth_string="admin:secret")


def test_the_stack_leaves_out_the_docs_security_and_response_layers() -> None:
    stack = contract_middlewares(validate_responses=False)

    assert RequestValidationMiddleware in stack
    assert SwaggerUIMiddleware not in stack
    assert SecurityMiddleware not in stack
    assert not any(issubclass(layer, ResponseValidationMiddleware) for layer in stack)


def test_responses_are_validated_only_when_asked() -> None:
    stack = contract_middlewares(validate_responses=True)

    assert any(issubclass(layer, ResponseValidationMiddleware) for layer in stack)


def test_validating_responses_without_their_layer_is_refused() -> None:
    app = FlaskApp(__name__, middlewares=contract_middlewares(validate_responses=False))

    with pytest.raises(ValueError, match="validate_responses"):
        mount_contract(
            app,
            routes=None,  # type: ignore[arg-type]
            validate_responses=True,
            body_limits=None,  # type: ignore[arg-type]
            basic_auth=None,
            log_requests=False,
            metrics_enabled=False,
            cors=None,
        )


def test_the_document_and_docs_page_are_still_served(served: TestClient) -> None:
    assert served.get("/api/openapi.json").status_code == 200
    assert served.get("/api/docs").status_code == 200


def test_credentials_are_still_required(served_with_auth: TestClient) -> None:
    token = base64.b64encode(b"admin:secret").decode()

    assert served_with_auth.get("/api/version").status_code == 401
    answered = served_with_auth.get("/api/version", headers={"Authorization": f"Basic {token}"})
    assert answered.status_code == 200


@pytest.mark.parametrize(("validate_responses", "status"), [(True, 500), (False, 200)])
def test_a_response_outside_the_contract_is_a_500_only_when_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validate_responses: bool, status: int
) -> None:
    # Before the app exists: its routes hold the handlers' bound methods.
    monkeypatch.setattr(RootHandlers, "server_version", _a_number_for_a_version)

    for client in _served(tmp_path, validate_responses=validate_responses):
        assert client.get("/api/version").status_code == status


def test_request_validation_still_answers_422(served: TestClient) -> None:
    answered = served.post("/api/task_runs/", json={"flow_run_id": None})

    assert answered.status_code == 422


def test_each_operation_is_prepared_once(
    served: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    decorated: list[object] = []
    original = FlaskDecorator.decorate

    def counting(self: FlaskDecorator, function: Any) -> Any:
        decorated.append(function)
        return original(self, function)

    validators_built: list[object] = []
    original_validators = operations._Validators.__init__

    def counting_validators(self: Any, validation: Any) -> None:
        validators_built.append(validation)
        original_validators(self, validation)

    monkeypatch.setattr(FlaskDecorator, "decorate", counting)
    monkeypatch.setattr(operations._Validators, "__init__", counting_validators)
    run_id = served.post("/api/task_runs/", json=_new_run()).json()["id"]

    for _ in range(3):
        assert served.get(f"/api/task_runs/{run_id}").status_code == 200

    # Four requests, two operations: each prepared at its first request only.
    assert [function.__name__ for function in decorated] == [  # type: ignore[attr-defined]
        "create_task_run_task_runs__post",
        "read_task_run_task_runs__id__get",
    ]
    assert len(validators_built) == 2


def test_the_operation_hooks_refuse_another_connexion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "version", lambda _: "3.4.0")

    with pytest.raises(UnsupportedConnexion, match=r"3\.4\.0"):
        operations.prepare_operations_once()


def test_a_task_run_is_serialised_as_before(
    served: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes of a response for fixed data: any change of the JSON path shows here."""
    frozen = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    # A create answers with the run's model, a read with JSON built from its row.
    for module in (task_runs, task_run_queries):
        monkeypatch.setattr(module, "utcnow", lambda: frozen)
    created = served.post("/api/task_runs/", json=_new_run())

    read = served.get(f"/api/task_runs/{created.json()['id']}")

    golden = GOLDEN_TASK_RUN.read_bytes().strip()
    assert read.content == created.content
    assert _without_state_id(read.content) == _without_state_id(golden)


def _a_number_for_a_version(_handlers: RootHandlers) -> tuple[int, int]:
    """A version answered as a number: the document says it is a string."""
    return 123, 200


def _new_run() -> dict[str, Any]:
    return {
        "id": str(UUID("0b6d3d1e-3a2c-4f55-9d7e-8a1b2c3d4e5f")),
        "name": "golden-run",
        "task_key": "golden",
        "dynamic_key": "0",
        "tags": ["b", "a"],
        "labels": {"team": "ü"},
        "state": {"type": "PENDING", "name": "Pending"},
    }


def _without_state_id(body: bytes) -> bytes:
    """The body with the state's id (random on every create) blanked, byte for byte."""
    document = json.loads(body)
    state_id = document["state"]["id"]
    return body.replace(state_id.encode(), b"<state id>").replace(
        document["state_id"].encode(), b"<state id>"
    )

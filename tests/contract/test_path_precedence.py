"""A document that grows: a literal path is its own operation's wherever the document lists
it, and `security: []` frees one operation, not its path's others nor a path like it.

The app here serves openapi.yaml with operations added, and route stubs that answer them.
"""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from connexion.lifecycle import ConnexionResponse
from starlette.testclient import TestClient

from app import main
from app.contract import api
from app.contract.spec import load_spec
from app.db.migrate import upgrade
from app.main import create_app, database_of
from app.settings import Settings
from generated.routes import Routes

CREDENTIALS = "admin:secret"
AUTHORIZED = {"Authorization": "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()}


def answered(name: str) -> ConnexionResponse:
    return ConnexionResponse(status_code=200, body=f'"{name}"', content_type="application/json")


class GrownRoutes(Routes):
    """The generated stubs, and stubs of the operations the test adds."""

    def task_run_stats_task_runs_stats_get(self) -> ConnexionResponse:
        return answered("stats")

    def read_notes_task_run_notes__get(self) -> ConnexionResponse:
        return answered("notes")

    def add_note_task_run_notes__post(self) -> ConnexionResponse:
        return answered("added")

    def run_status_task_runs__id__status_get(self, *, id: str) -> ConnexionResponse:
        return answered(f"status of {id}")


def operation(operation_id: str, *, public: bool = False, **fields: Any) -> dict[str, Any]:
    text = {"application/json": {"schema": {"type": "string"}}}
    described: dict[str, Any] = {
        "tags": ["Task Runs"],
        "summary": operation_id,
        "operationId": operation_id,
        "responses": {"200": {"description": "Answered.", "content": text}},
        **fields,
    }
    if public:
        described["security"] = []
    return described


def grown_document() -> dict[str, Any]:
    document = load_spec()
    paths = document["paths"]
    # Listed after /task_runs/{id}, whose GET would take it if the order decided.
    paths["/task_runs/stats"] = {"get": operation("task_run_stats_task_runs_stats_get")}
    paths["/task_run_notes/"] = {
        "get": operation("read_notes_task_run_notes__get", public=True),
        "post": operation("add_note_task_run_notes__post"),
    }
    id_parameter = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths["/task_runs/{id}/status"] = {
        "get": operation(
            "run_status_task_runs__id__status_get", public=True, parameters=[id_parameter]
        )
    }
    return document


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    document = grown_document()
    monkeypatch.setattr(api, "load_spec", lambda: copy.deepcopy(document))
    monkeypatch.setattr(
        main,
        "create_routes",
        lambda database, settings: GrownRoutes(**main.handler_groups(database, settings)),
    )
    url = f"sqlite:///{tmp_path / 'grown.db'}"
    upgrade(url)
    application = create_app(Settings(database_url=url, api_auth_string=CREDENTIALS))
    try:
        with application.test_client() as test_client:
            yield test_client
    finally:
        database_of(application).dispose()


def test_a_literal_path_listed_after_a_templated_one_is_routed_to_its_own_operation(
    client: TestClient,
) -> None:
    stats = client.get("/api/task_runs/stats", headers=AUTHORIZED)
    run = client.get(f"/api/task_runs/{uuid.uuid4()}", headers=AUTHORIZED)
    not_allowed = client.delete("/api/task_runs/stats", headers=AUTHORIZED)

    assert (stats.status_code, stats.json()) == (200, "stats")
    assert (run.status_code, run.json()) == (404, {"detail": "Task run not found"})
    assert (not_allowed.status_code, not_allowed.headers["allow"]) == (405, "GET, HEAD")


def test_a_public_operation_frees_neither_its_paths_other_methods_nor_other_paths(
    client: TestClient,
) -> None:
    public = client.get("/api/task_run_notes/")
    guarded = client.post("/api/task_run_notes/")
    guarded_with_credentials = client.post("/api/task_run_notes/", headers=AUTHORIZED)
    guarded_run = client.get(f"/api/task_runs/{uuid.uuid4()}")

    assert (public.status_code, public.json()) == (200, "notes")
    assert guarded.status_code == 401
    assert (guarded_with_credentials.status_code, guarded_with_credentials.json()) == (
        200,
        "added",
    )
    assert guarded_run.status_code == 401


def test_a_public_operation_on_a_templated_path_needs_no_credentials(
    client: TestClient,
) -> None:
    response = client.get("/api/task_runs/abc/status")

    assert (response.status_code, response.json()) == (200, "status of abc")

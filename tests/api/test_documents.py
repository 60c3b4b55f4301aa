"""The contract as written, and the Swagger UI page showing it, through HTTP."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from app.contract.api import methods_by_path

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS_BY_PATH = methods_by_path(yaml.safe_load(SPEC_PATH.read_text()))


def references(node: Any) -> list[str]:
    """Every `$ref` in a document, in order."""
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    return []


class TestOpenApiYaml:
    def test_is_the_file_byte_for_byte(self, client: TestClient) -> None:
        response = client.get("/api/openapi.yaml")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/yaml"
        assert response.content == SPEC_PATH.read_bytes()

    def test_answers_head_without_a_body(self, client: TestClient) -> None:
        response = client.head("/api/openapi.yaml")

        assert response.status_code == 200
        assert response.content == b""
        assert int(response.headers["content-length"]) == len(SPEC_PATH.read_bytes())


class TestOpenApiJson:
    def test_is_the_same_document(self, client: TestClient) -> None:
        response = client.get("/api/openapi.json")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == yaml.safe_load(SPEC_PATH.read_text())

    def test_keeps_every_reference_and_component(self, client: TestClient) -> None:
        served = client.get("/api/openapi.json").json()
        written = yaml.safe_load(SPEC_PATH.read_text())

        assert references(served) == references(written)
        assert len(references(served)) > 50
        assert served["components"].keys() == written["components"].keys()
        assert served["components"]["schemas"].keys() == written["components"]["schemas"].keys()

    def test_keeps_descriptions_beside_references(self, client: TestClient) -> None:
        state = client.get("/api/openapi.json").json()["components"]["schemas"]["TaskRunCreate"]
        state = state["properties"]["state"]

        assert "$ref" in state["anyOf"][0]
        assert state["description"] == "The state of the task run to create"

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
    def test_other_methods_are_refused(self, client: TestClient, method: str) -> None:
        response = client.request(method, "/api/openapi.json")

        assert response.status_code == 405
        assert response.json() == {"detail": "Method Not Allowed"}
        assert response.headers["allow"] == "GET, HEAD"


class TestDocs:
    def test_is_swagger_ui_reading_the_served_document(self, client: TestClient) -> None:
        response = client.get("/api/docs")

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "SwaggerUIBundle(" in response.text
        assert 'url: "/api/openapi.json"' in response.text

    def test_every_asset_of_the_page_is_served_here(self, client: TestClient) -> None:
        page = client.get("/api/docs").text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)

        assert len(assets) >= 4
        for asset in assets:
            assert asset.startswith("/api/docs/static/"), asset
            assert client.get(asset).status_code == 200, asset

    def test_the_bundle_is_swagger_ui_5(self, client: TestClient) -> None:
        bundle = client.get("/api/docs/static/swagger-ui-bundle.js")

        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        versions = set(re.findall(rb'"(5\.[0-9]+\.[0-9]+)"', bundle.content))
        assert versions, "no Swagger UI 5 version string in the bundle"

    def test_an_unknown_asset_is_a_json_404(self, client: TestClient) -> None:
        response = client.get("/api/docs/static/no-such-file.js")

        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}

    def test_connexions_own_swagger_ui_is_not_served(self, client: TestClient) -> None:
        # It is Swagger UI 4, which cannot render OpenAPI 3.1.
        assert client.get("/api/ui/").status_code == 404


class TestMethodsOfEachPath:
    """A method a path does not have is 405, with every method of that path, and only of that
    path, in `Allow` (`/task_runs/filter` is not `/task_runs/{id}`).
    """

    @pytest.mark.parametrize("template", sorted(METHODS_BY_PATH))
    def test_a_missing_method_lists_the_paths_own(self, client: TestClient, template: str) -> None:
        methods = METHODS_BY_PATH[template]
        missing = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in methods)
        path = re.sub(r"\{[^/]+\}", str(uuid.UUID(int=1)), template)

        response = client.request(missing, path)

        assert response.status_code == 405
        allowed = methods | ({"HEAD"} if "GET" in methods else set())
        assert response.headers["allow"] == ", ".join(sorted(allowed))


class TestHead:
    @pytest.mark.parametrize(
        "path",
        [
            "/api/health",
            "/api/ready",
            "/api/version",
            "/api/hello",
            "/api/admin/version",
            "/api/csrf-token?client=a",
        ],
    )
    def test_every_read_answers_head_as_its_get_without_the_body(
        self, client: TestClient, path: str
    ) -> None:
        # The tests' app validates its responses, as production does not.
        got = client.get(path)
        head = client.head(path)

        assert (head.status_code, head.content) == (got.status_code, b"")
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]

    def test_a_run_and_a_state_answer_head(self, client: TestClient) -> None:
        run = client.post("/api/task_runs/", json={"task_key": "k", "dynamic_key": "0"}).json()

        for path in (f"/api/task_runs/{run['id']}", f"/api/task_run_states/{run['state_id']}"):
            head = client.head(path)
            assert (head.status_code, head.content) == (200, b"")

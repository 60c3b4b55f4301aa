"""A path that Connexion's router does not match is a JSON 404, whatever Flask's own URL map
would make of it (it merges doubled slashes: it would redirect some such paths, without a
Location, and run the views of others without Connexion's routing, a 500).
"""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

# A whole URL: httpx reads a path that starts with `//` as a host name.
SERVER = "http://testserver"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "//api/health"),
        ("POST", "//api/task_runs/"),
        ("GET", f"//api/task_runs/{uuid.uuid4()}"),
        ("GET", "//api/task_runs/nope"),
        ("GET", "/api//health"),
        ("POST", "/api/task_runs//filter"),
        ("POST", "/api//task_runs/"),
        ("GET", "//metrics"),
        ("GET", "/api/no-such-path"),
    ],
)
def test_an_unknown_path_is_a_json_404(client: TestClient, method: str, path: str) -> None:
    body = {"task_key": "t", "dynamic_key": "d"} if method == "POST" else None

    response = client.request(method, SERVER + path, json=body, follow_redirects=False)

    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/health", 200),
        ("GET", "/api/docs", 200),
        ("GET", "/api/docs/static/swagger-ui.css", 200),
        ("GET", "/api/openapi.json", 200),
        ("GET", "/api/openapi.yaml", 200),
        ("GET", "/metrics", 200),
        ("POST", "/api/task_runs/filter", 200),
        ("GET", "/api/health/", 307),
        ("POST", "/api/task_runs", 307),
        ("DELETE", "/api/health", 405),
    ],
)
def test_a_known_path_is_answered(client: TestClient, method: str, path: str, status: int) -> None:
    body: dict[str, str] | None = {} if method == "POST" else None

    response = client.request(method, path, json=body, follow_redirects=False)

    assert response.status_code == status, response.text

"""CORS, answered by Starlette's middleware as Prefect's server settings describe it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings

ORIGIN = "https://ui.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, x-prefect-api-version",
}


@contextmanager
def serving(tmp_path: Path, **cors: str) -> Iterator[TestClient]:
    settings = Settings.model_validate({"database_url": f"sqlite:///{tmp_path / 'x.db'}", **cors})
    with create_app(settings).test_client() as client:
        yield client


class TestDefaultPolicy:
    """Prefect's defaults: any origin, method and header."""

    def test_a_preflight_is_allowed(self, client: TestClient) -> None:
        response = client.options("/api/task_runs/", headers=PREFLIGHT)

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "POST" in response.headers["access-control-allow-methods"]
        assert (
            response.headers["access-control-allow-headers"]
            == PREFLIGHT["Access-Control-Request-Headers"]
        )

    def test_answers_carry_the_headers_and_expose_the_request_id(self, client: TestClient) -> None:
        response = client.post(
            "/api/task_runs/",
            json={"task_key": "t", "dynamic_key": "d"},
            headers={"Origin": ORIGIN},
        )

        assert response.status_code == 201
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["access-control-expose-headers"] == "X-Request-ID"

    def test_error_answers_carry_them_too(self, client: TestClient) -> None:
        response = client.get("/api/no-such-path", headers={"Origin": ORIGIN})

        assert response.status_code == 404
        assert response.headers["access-control-allow-origin"] == "*"

    def test_a_request_without_an_origin_gets_no_cors_headers(self, client: TestClient) -> None:
        response = client.get("/api/health")

        assert "access-control-allow-origin" not in response.headers


class TestConfiguredPolicy:
    def test_a_listed_origin_is_allowed(self, tmp_path: Path) -> None:
        with serving(tmp_path, cors_allowed_origins=f"https://other.example, {ORIGIN}") as client:
            response = client.options("/api/task_runs/", headers=PREFLIGHT)

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN

    def test_another_origin_is_not(self, tmp_path: Path) -> None:
        with serving(tmp_path, cors_allowed_origins="https://other.example") as client:
            preflight = client.options("/api/task_runs/", headers=PREFLIGHT)
            simple = client.get("/api/health", headers={"Origin": ORIGIN})

        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers

    def test_methods_and_headers_can_be_limited(self, tmp_path: Path) -> None:
        with serving(
            tmp_path, cors_allowed_methods="GET", cors_allowed_headers="content-type"
        ) as client:
            response = client.options("/api/task_runs/", headers=PREFLIGHT)

        assert response.status_code == 400
        assert response.text == "Disallowed CORS method, headers"

    def test_no_origins_means_no_cors(self, tmp_path: Path) -> None:
        with serving(tmp_path, cors_allowed_origins="") as client:
            preflight = client.options("/api/task_runs/", headers=PREFLIGHT)
            simple = client.get("/api/health", headers={"Origin": ORIGIN})

        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in simple.headers

    def test_a_preflight_needs_no_credentials(self, tmp_path: Path) -> None:
        with serving(tmp_path, api_auth_string="admin:secret") as client:
            preflight = client.options("/api/task_runs/", headers=PREFLIGHT)
            unauthorized = client.get("/api/version", headers={"Origin": ORIGIN})

        assert preflight.status_code == 200
        assert unauthorized.status_code == 401
        assert unauthorized.headers["access-control-allow-origin"] == "*"


class TestSettings:
    @pytest.mark.parametrize("prefix", ["", "PREFECT_SERVER_API_"])
    def test_are_read_under_prefects_names_too(
        self, monkeypatch: pytest.MonkeyPatch, prefix: str
    ) -> None:
        monkeypatch.setenv(f"{prefix}CORS_ALLOWED_ORIGINS", ORIGIN)
        monkeypatch.setenv(f"{prefix}CORS_ALLOWED_METHODS", "GET,POST")
        monkeypatch.setenv(f"{prefix}CORS_ALLOWED_HEADERS", "content-type")

        settings = Settings()

        assert settings.cors_allowed_origins == ORIGIN
        assert settings.cors_allowed_methods == "GET,POST"
        assert settings.cors_allowed_headers == "content-type"

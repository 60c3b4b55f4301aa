"""The Root and Admin operations, and HTTP Basic authentication, through HTTP."""

from __future__ import annotations

import base64
import logging
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from app.db.migrate import downgrade, head_revision, upgrade
from app.main import create_app
from app.settings import Settings

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
CREDENTIALS = "admin:s3cret:with-colon"


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def every_operation() -> Iterator[tuple[str, str, bool]]:
    """(method, path under /api, whether it is public) of every operation in the document,
    ids filled in; public operations say `security: []`.
    """
    for path, operations in SPEC["paths"].items():
        for method, operation in operations.items():
            public = operation.get("security") == []
            yield method.upper(), "/api" + path.replace("{id}", str(uuid.uuid4())), public


class TestHealthCheck:
    def test_answers_true(self, client: TestClient) -> None:
        response = client.get("/api/health")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() is True


class TestPerformReadinessCheck:
    @staticmethod
    def ready(database_url: str, *, credentials: str | None = None) -> tuple[int, dict[str, str]]:
        """Status and body of the readiness check of a service over `database_url`."""
        settings = Settings(
            database_url=database_url, validate_responses=True, api_auth_string=credentials
        )
        with create_app(settings).test_client() as test_client:
            response = test_client.get("/api/ready")
        assert response.headers["content-type"] == "application/json"
        return response.status_code, response.json()

    def test_a_migrated_database_is_ready(self, client: TestClient) -> None:
        response = client.get("/api/ready")

        assert response.status_code == 200
        assert response.json() == {"message": "OK"}

    def test_a_probe_logs_nothing_of_alembic(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="alembic")

        assert client.get("/api/ready").status_code == 200
        assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []

    def test_an_empty_database_is_not(self, tmp_path: Path) -> None:
        status, body = self.ready(f"sqlite:///{tmp_path / 'empty.db'}")

        assert status == 503
        assert body == {
            "message": f"Database schema is at no revision, not at {head_revision()}: "
            "run `taskrun-api db upgrade`"
        }

    def test_a_database_behind_the_newest_migration_is_not(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'behind.db'}"
        upgrade(url)
        downgrade(url, "-1")

        status, body = self.ready(url)

        assert status == 503
        assert body["message"].startswith("Database schema is at ")
        assert f"not at {head_revision()}" in body["message"]

    def test_a_database_a_newer_service_migrated_says_so(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'ahead.db'}"
        upgrade(url)
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute("UPDATE alembic_version SET version_num = 'f00dfeed1234'")

        status, body = self.ready(url)

        assert status == 503
        assert body == {
            "message": "Database schema is at f00dfeed1234, a revision this service does not"
            " know (a newer version migrated it): run that version, or one newer"
        }

    def test_an_unreachable_database_is_not(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.contract.errors")
        status, body = self.ready(f"sqlite:///{tmp_path / 'no-such-directory' / 'x.db'}")

        assert (status, body) == (503, {"message": "Database is not available"})
        # What the database raised, by name, beside the answer's words.
        [line] = [r.getMessage() for r in caplog.records if r.name == "app.contract.errors"]
        assert line.startswith("not ready: Database is not available: app.db.database.")

    def test_operations_on_an_empty_database_say_why_until_it_is_migrated(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # As `taskrun-api serve --no-migrate` serves before `db upgrade` has run.
        url = f"sqlite:///{tmp_path / 'unmigrated.db'}"
        caplog.set_level(logging.WARNING, logger="app.contract.errors")
        settings = Settings(database_url=url, validate_responses=True)
        with create_app(settings).test_client() as test_client:
            before = test_client.post("/api/task_runs/count", json={})
            upgrade(url)
            after = test_client.post("/api/task_runs/count", json={})

        assert (before.status_code, before.json()) == (
            503,
            {
                "detail": f"Database schema is at no revision, not at {head_revision()}: "
                "run `taskrun-api db upgrade`"
            },
        )
        assert (after.status_code, after.json()) == (200, 0)
        [record] = [r for r in caplog.records if r.name == "app.contract.errors"]
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(
            "not ready: Database schema is at no revision, not at"
        )
        assert "Traceback" not in record.getMessage()

    def test_needs_no_credentials(self, database_url: str) -> None:
        status, body = self.ready(database_url, credentials=CREDENTIALS)

        assert (status, body) == (200, {"message": "OK"})


class TestServerVersion:
    def test_answers_the_api_version_of_the_document(self, client: TestClient) -> None:
        assert client.get("/api/version").json() == SPEC["info"]["version"] == "0.8.4"


class TestHello:
    def test_greets(self, client: TestClient) -> None:
        response = client.get("/api/hello")

        assert response.json() == "👋"
        assert "👋".encode() in response.content


class TestReadServerVersion:
    def test_answers_a_prefect_3_version(self, client: TestClient) -> None:
        version = client.get("/api/admin/version").json()

        assert re.fullmatch(r"3\.[0-9]+\.[0-9]+", version)

    def test_the_version_is_configurable(self, tmp_path: Path) -> None:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'x.db'}", prefect_server_version="3.10.0"
        )

        with create_app(settings).test_client() as client:
            assert client.get("/api/admin/version").json() == "3.10.0"

    def test_a_version_that_is_not_x_y_z_is_refused(self) -> None:
        with pytest.raises(ValueError, match="prefect_server_version"):
            Settings(prefect_server_version="three")


class TestCreateCsrfToken:
    def test_answers_that_csrf_protection_is_disabled(self, client: TestClient) -> None:
        response = client.get("/api/csrf-token", params={"client": str(uuid.uuid4())})

        assert response.status_code == 422
        assert response.json() == {"detail": "CSRF protection is disabled."}

    def test_without_a_client_it_is_a_validation_error(self, client: TestClient) -> None:
        response = client.get("/api/csrf-token")

        assert response.status_code == 422
        assert response.json()["detail"] == [
            {"loc": ["query", "client"], "msg": "Field required", "type": "missing"}
        ]


class TestBasicAuthentication:
    @pytest.fixture
    def guarded(self, tmp_path: Path) -> Iterator[TestClient]:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'x.db'}",
            api_auth_string=CREDENTIALS,
            validate_responses=True,
        )
        with create_app(settings).test_client() as test_client:
            yield test_client

    def test_only_health_and_readiness_are_public(self) -> None:
        public = {path for _, path, is_public in every_operation() if is_public}

        assert public == {"/api/health", "/api/ready"}

    @pytest.mark.parametrize(("method", "path", "public"), list(every_operation()))
    def test_every_operation_but_the_public_ones_needs_credentials(
        self, guarded: TestClient, method: str, path: str, public: bool
    ) -> None:
        for headers in ({}, basic("admin:wrong"), {"Authorization": "Bearer token"}):
            response = guarded.request(method, path, headers=headers)

            if public:
                assert response.status_code != 401, (method, path, headers)
            else:
                assert response.status_code == 401, (method, path, headers)
                assert response.json() == {"detail": "Unauthorized"}
                assert response.headers["www-authenticate"] == 'Basic realm="taskrun-api"'

    @pytest.mark.parametrize("scheme", ["basic", "BASIC", "bAsIc"])
    def test_the_scheme_name_is_case_insensitive(self, guarded: TestClient, scheme: str) -> None:
        token = base64.b64encode(CREDENTIALS.encode()).decode()

        response = guarded.get("/api/version", headers={"Authorization": f"{scheme} {token}"})

        assert response.status_code == 200

    @pytest.mark.parametrize(
        "authorization",
        ["Basic", "Basic !!!", "Basic " + base64.b64encode(b"admin:wrong").decode(), "Digest x"],
    )
    def test_malformed_or_wrong_credentials_are_401(
        self, guarded: TestClient, authorization: str
    ) -> None:
        response = guarded.get("/api/version", headers={"Authorization": authorization})

        assert response.status_code == 401

    def test_the_health_check_with_a_trailing_slash_needs_no_credentials(
        self, guarded: TestClient
    ) -> None:
        response = guarded.get("/api/health/", follow_redirects=False)

        assert response.status_code == 307
        assert response.headers["location"].endswith("/api/health")

    def test_the_document_and_unknown_paths_are_guarded_too(self, guarded: TestClient) -> None:
        assert guarded.get("/api/openapi.json").status_code == 401
        assert guarded.get("/api/no-such-thing").status_code == 401

    def test_the_right_credentials_open_every_operation(
        self, guarded: TestClient, tmp_path: Path
    ) -> None:
        from app.db.migrate import upgrade  # noqa: PLC0415

        upgrade(f"sqlite:///{tmp_path / 'x.db'}")
        headers = basic(CREDENTIALS)

        created = guarded.post(
            "/api/task_runs/", json={"task_key": "t", "dynamic_key": "d"}, headers=headers
        )
        read = guarded.get(f"/api/task_runs/{created.json()['id']}", headers=headers)

        assert (created.status_code, read.status_code) == (201, 200)
        assert guarded.get("/api/version", headers=headers).status_code == 200
        assert guarded.get("/api/openapi.json", headers=headers).status_code == 200

    @pytest.mark.parametrize("variable", ["API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"])
    def test_credentials_come_from_either_variable(
        self, monkeypatch: pytest.MonkeyPatch, variable: str
    ) -> None:
        monkeypatch.setenv(variable, CREDENTIALS)

        auth_string = Settings().api_auth_string

        assert auth_string is not None
        assert auth_string.get_secret_value() == CREDENTIALS
        assert CREDENTIALS not in repr(Settings())

    def test_an_empty_variable_means_no_authentication(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("API_AUTH_STRING", "")

        assert Settings().api_auth_string is None

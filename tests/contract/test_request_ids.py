"""X-Request-ID: taken from the request when acceptable, made up otherwise, always returned,
and readable by any code that runs for the request.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app.handlers.root
from app.main import create_app
from app.observability.logs import current_request_id
from app.settings import Settings

GENERATED = re.compile(r"[0-9a-f]{32}")


class TestRequestId:
    def test_is_made_up_when_the_request_has_none(self, client: TestClient) -> None:
        first = client.get("/api/health").headers["x-request-id"]
        second = client.get("/api/health").headers["x-request-id"]

        assert GENERATED.fullmatch(first)
        assert GENERATED.fullmatch(second)
        assert first != second

    @pytest.mark.parametrize(
        "request_id",
        [
            str(uuid.uuid4()),
            uuid.uuid4().hex,
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "a" * 128,
        ],
    )
    def test_an_acceptable_one_is_kept(self, client: TestClient, request_id: str) -> None:
        response = client.get("/api/health", headers={"X-Request-ID": request_id})

        assert response.headers["x-request-id"] == request_id

    @pytest.mark.parametrize(
        "request_id",
        [b"a" * 129, b"two words", b'quote"d', b"back\\slash", b"semi;colon", b"<b>", b"caf\xe9"],
    )
    def test_an_unacceptable_one_is_replaced(self, client: TestClient, request_id: bytes) -> None:
        response = client.get("/api/health", headers=[(b"x-request-id", request_id)])

        assert GENERATED.fullmatch(response.headers["x-request-id"])

    @pytest.mark.parametrize(
        ("method", "path", "body", "status"),
        [
            ("GET", "/api/no-such-path", None, 404),
            ("GET", f"/api/task_runs/{uuid.uuid4()}", None, 404),
            ("GET", "/api/task_runs/not-a-uuid", None, 422),
            ("POST", "/api/task_runs/", {"task_key": 1}, 422),
            ("DELETE", "/api/health", None, 405),
            ("GET", "/api/docs/static/no-such-file.js", None, 404),
        ],
    )
    def test_every_error_carries_it(
        self, client: TestClient, method: str, path: str, body: object, status: int
    ) -> None:
        response = client.request(method, path, json=body, headers={"X-Request-ID": "err-1"})

        assert response.status_code == status
        assert response.headers["x-request-id"] == "err-1"

    def test_a_401_carries_it(self, tmp_path: Path) -> None:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", api_auth_string="a:b")
        with create_app(settings).test_client() as guarded:
            response = guarded.get("/api/version", headers={"X-Request-ID": "no-credentials"})

        assert response.status_code == 401
        assert response.headers["x-request-id"] == "no-credentials"

    def test_code_serving_the_request_can_read_it(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[str | None] = []

        def check_readiness(**_arguments: object) -> str:
            seen.append(current_request_id())
            return "OK"

        monkeypatch.setattr(app.handlers.root, "check_readiness", check_readiness)

        response = client.get("/api/ready", headers={"X-Request-ID": "traced-1"})

        assert response.status_code == 200
        assert seen == ["traced-1"]

    def test_is_none_outside_of_a_request(self) -> None:
        assert current_request_id() is None

"""`GET /metrics` in one process: on by default, off with METRICS_ENABLED=false, guarded
like the API. tests/serving/test_metrics.py checks the counts of a two-worker server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@contextmanager
def serving(tmp_path: Path, **settings: object) -> Iterator[TestClient]:
    configured = Settings.model_validate(
        {"database_url": f"sqlite:///{tmp_path / 'x.db'}", **settings}
    )
    with create_app(configured).test_client() as client:
        yield client


class TestMetricsEndpoint:
    def test_is_served_in_prometheus_text_format(self, client: TestClient) -> None:
        client.get("/api/health")

        response = client.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# TYPE taskrun_http_requests_total counter" in response.text
        assert 'operation_id="health_check_health_get",status="200"' in response.text
        assert "# TYPE taskrun_http_request_duration_seconds histogram" in response.text
        assert "taskrun_http_requests_in_flight" in response.text
        assert "taskrun_database_connections_in_use" in response.text

    def test_counts_orchestration_results_by_status(self, client: TestClient) -> None:
        def counted(status: str) -> float:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith(f'taskrun_orchestration_results_total{{status="{status}"}}'):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        before = {status: counted(status) for status in ("ACCEPT", "ABORT")}
        run = client.post("/api/task_runs/", json={"task_key": "m", "dynamic_key": "0"}).json()
        for state_type in ("RUNNING", "COMPLETED", "CRASHED"):
            client.post(
                f"/api/task_runs/{run['id']}/set_state", json={"state": {"type": state_type}}
            )

        assert counted("ACCEPT") - before["ACCEPT"] == 2
        assert counted("ABORT") - before["ABORT"] == 1

    def test_is_not_served_when_disabled(self, tmp_path: Path) -> None:
        with serving(tmp_path, metrics_enabled=False) as client:
            response = client.get("/metrics")

        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}

    def test_needs_the_credentials_the_api_needs(self, tmp_path: Path) -> None:
        with serving(tmp_path, api_auth_string="admin:secret") as client:
            refused = client.get("/metrics")
            answered = client.get("/metrics", auth=("admin", "secret"))

        assert refused.status_code == 401
        assert answered.status_code == 200

"""`GET /metrics` in one process: on by default, off with METRICS_ENABLED=false, guarded
like the API. tests/serving/test_metrics.py checks the counts of a two-worker server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
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


def documented_metrics() -> set[str]:
    """The metric names of the README's table of metrics."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    row = re.compile(r"^\| `(taskrun_[a-z_]+)` \| (?:counter|gauge|histogram) \|", re.MULTILINE)
    return set(row.findall(readme))


def test_the_readme_documents_every_metric_served(client: TestClient) -> None:
    client.post("/api/task_runs/", json={"task_key": "m", "dynamic_key": "0"})
    scraped = client.get("/metrics").text

    # Each family's name as a query names it; the `_created` times are not metrics of ours.
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(scraped)
        if not family.name.endswith("_created")
    }

    assert served == documented_metrics()


def test_a_database_without_the_tables_leaves_the_queue_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Not migrated: `serve --no-migrate` on an empty database.
    with serving(tmp_path) as client:
        response = client.get("/metrics")

    assert response.status_code == 200
    assert "taskrun_http_requests_total" in response.text
    assert "taskrun_task_run_queue" not in response.text
    assert "/metrics: the queue was not counted: sqlalchemy.exc.OperationalError" in caplog.text

"""The server's log as an operator reads it: JSON lines or text, each request on a line of
its own with its id, and a 500 logged with the exception but answered without it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.databases import sqlite_database
from tests.support.server import running_server

HEALTH_ID = "health-check-1"
FAILING_ID = "failing-read-1"
QUERY_SECRET = "query-secret-1"
FORGED_LINE = "INFO     forged-id GET /api/health 200 health_check_health_get 0.10 ms"
FORGING_PATH = "/x%0A" + FORGED_LINE.replace(" ", "%20") + "%0D"


@dataclass(frozen=True)
class Served:
    """What a short session with a server sent and got, and the log it wrote."""

    log: str
    created: httpx.Response
    failed: httpx.Response


def serve_a_few_requests(tmp_path: Path, *, log_format: str) -> Served:
    """Health, a create, a 404, a 422, an unknown path and a 500, then a clean stop; the log
    it wrote.
    """
    log_path = tmp_path / f"server-{log_format}.log"
    with (
        sqlite_database(tmp_path) as url,
        running_server(
            url, environment={"LOG_LEVEL": "INFO", "LOG_FORMAT": log_format}, log_path=log_path
        ) as server,
        httpx.Client(base_url=server.api_url, timeout=30) as client,
    ):
        client.get("/health", headers={"X-Request-ID": HEALTH_ID})
        created = client.post("/task_runs/", json={"task_key": "k", "dynamic_key": "0"})
        client.get(f"/task_runs/{uuid.uuid4()}")
        client.post("/task_runs/", json={"task_key": 5})
        # A path whose line break and carriage return would start a forged line of their own.
        client.get(FORGING_PATH)
        # A websocket whose query string holds what could be a token.
        events_in = server.api_url.replace("http://", "ws://") + f"/events/in?token={QUERY_SECRET}"
        with connect(events_in):
            pass
        # A fault no request can cause: the table goes away under the running service.
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute("ALTER TABLE task_run RENAME TO task_run_gone")
        failed = client.get(
            f"/task_runs/{created.json()['id']}", headers={"X-Request-ID": FAILING_ID}
        )
    return Served(log=log_path.read_text(), created=created, failed=failed)


@pytest.fixture(scope="module")
def json_session(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return serve_a_few_requests(tmp_path_factory.mktemp("json-log"), log_format="json")


@pytest.fixture(scope="module")
def text_session(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return serve_a_few_requests(tmp_path_factory.mktemp("text-log"), log_format="text")


def records(log: str) -> Iterator[dict[str, Any]]:
    for line in log.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        yield record


def request_lines(log: str) -> list[dict[str, Any]]:
    """The request lines, from our first request on (the health checks of the start before)."""
    lines = [record for record in records(log) if record["logger"] == "app.requests"]
    first = next(i for i, line in enumerate(lines) if line["request_id"] == HEALTH_ID)
    return lines[first:]


class TestJsonLog:
    def test_every_line_is_one_json_object(self, json_session: Served) -> None:
        lines = list(records(json_session.log))

        assert len(lines) >= 10
        for record in lines:
            assert {"time", "level", "logger", "message"} <= record.keys(), record
            assert record["time"].endswith("+00:00"), record

    def test_uvicorns_lines_are_json_too(self, json_session: Served) -> None:
        loggers = {record["logger"] for record in records(json_session.log)}
        messages = [record["message"] for record in records(json_session.log)]

        assert "uvicorn.error" in loggers
        assert any(message.startswith("Started server process") for message in messages)
        assert not any("\x1b[" in json.dumps(record) for record in records(json_session.log))

    def test_each_request_has_a_line_with_what_an_operator_needs(
        self, json_session: Served
    ) -> None:
        lines = request_lines(json_session.log)

        assert [(line["method"], line["status"], line["operation_id"]) for line in lines] == [
            ("GET", 200, "health_check_health_get"),
            ("POST", 201, "create_task_run_task_runs__post"),
            ("GET", 404, "read_task_run_task_runs__id__get"),
            ("POST", 422, "create_task_run_task_runs__post"),
            ("GET", 404, None),
            ("GET", 500, "read_task_run_task_runs__id__get"),
        ]
        health = lines[0]
        assert health["path"] == "/api/health"
        assert health["request_id"] == HEALTH_ID
        assert health["level"] == "INFO"
        assert 0 < health["duration_ms"] < 10_000

    def test_a_websockets_line_leaves_its_query_string_out(self, json_session: Served) -> None:
        messages = [record["message"] for record in records(json_session.log)]

        assert any('"WebSocket /api/events/in" [accepted]' in message for message in messages)
        assert QUERY_SECRET not in json_session.log

    def test_a_generated_request_id_is_the_one_returned(self, json_session: Served) -> None:
        returned = json_session.created.headers["x-request-id"]

        assert len(returned) == 32
        assert request_lines(json_session.log)[1]["request_id"] == returned

    def test_a_500_logs_the_exception_with_the_request_id(self, json_session: Served) -> None:
        errors = [record for record in records(json_session.log) if record["level"] == "ERROR"]

        assert len(errors) == 1, errors
        assert errors[0]["request_id"] == FAILING_ID
        # The exception by name and where it passed, never its message (which can quote
        # rows and SQL parameters).
        assert errors[0]["message"].startswith(
            "unhandled error: sqlalchemy.exc.OperationalError, caused by sqlite3.OperationalError"
        )
        assert 'File "' in errors[0]["message"]
        assert "no such table" not in json_session.log

    def test_the_500_answer_carries_no_traceback(self, json_session: Served) -> None:
        assert json_session.failed.status_code == 500
        assert json_session.failed.json() == {"detail": "Internal Server Error"}
        assert json_session.failed.headers["x-request-id"] == FAILING_ID


class TestTextLog:
    def test_every_line_has_a_level_and_a_request_id(self, text_session: Served) -> None:
        starts = [line.split()[:2] for line in text_session.log.splitlines() if line[:1].isupper()]

        assert ["INFO", "-"] in starts  # uvicorn's and the migrations' lines
        assert ["INFO", HEALTH_ID] in starts

    def test_a_path_cannot_start_a_line_of_its_own(self, text_session: Served) -> None:
        lines = text_session.log.splitlines()

        assert not [line for line in lines if line.startswith(FORGED_LINE)]
        [logged] = [line for line in lines if FORGED_LINE in line]
        assert "/api/x\\n" + FORGED_LINE + "\\r 404" in logged

    def test_is_not_json(self, text_session: Served) -> None:
        for line in text_session.log.splitlines():
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)

    def test_each_request_has_a_line_with_its_id(self, text_session: Served) -> None:
        lines = text_session.log.splitlines()

        health = [line for line in lines if f" {HEALTH_ID} " in line]
        assert len(health) == 1, lines
        assert health[0].startswith(f"INFO     {HEALTH_ID} GET /api/health 200 ")
        assert "health_check_health_get" in health[0]
        assert health[0].endswith(" ms")

    def test_a_500_logs_the_exception_with_the_request_id(self, text_session: Served) -> None:
        errors = [line for line in text_session.log.splitlines() if line.startswith("ERROR")]

        assert errors == [
            f"ERROR    {FAILING_ID} unhandled error: sqlalchemy.exc.OperationalError, caused by"
            " sqlite3.OperationalError"
        ]
        assert "no such table" not in text_session.log

"""Requests refused before the application sees them (a malformed request, a head too large
or too slow) are answered with a request id, logged and counted like every other request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.faults.rawhttp import RawResponse, exchange
from tests.support.databases import sqlite_database
from tests.support.faults import wait_for
from tests.support.metrics import Scrape
from tests.support.server import RunningServer, running_server

MAX_HEADERS = 8
HEADER_TIMEOUT = 1.0


@dataclass(frozen=True)
class Refused:
    server: RunningServer
    malformed: RawResponse
    too_many_headers: RawResponse
    too_slow: RawResponse


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refused]:
    directory = tmp_path_factory.mktemp("refusals")
    environment = {
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "MAX_REQUEST_HEADERS": str(MAX_HEADERS),
        "REQUEST_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    }
    with (
        sqlite_database(directory) as url,
        running_server(
            url, workers=1, environment=environment, log_path=directory / "server.log"
        ) as server,
    ):
        headers = b"".join(b"X-H%d: v\r\n" % number for number in range(MAX_HEADERS + 1))
        yield Refused(
            server=server,
            malformed=exchange(server.port, b"GARBAGE\r\n\r\n"),
            too_many_headers=exchange(
                server.port, b"POST /api/task_runs/filter HTTP/1.1\r\n" + headers + b"\r\n"
            ),
            too_slow=exchange(server.port, b"GET /api/heal"),
        )


def request_line(server: RunningServer, request_id: str) -> dict[str, Any]:
    def logged() -> dict[str, Any] | None:
        for line in server.log().splitlines():
            if request_id in line:
                record: dict[str, Any] = json.loads(line)
                if record["logger"] == "app.requests":
                    return record
        return None

    assert wait_for(lambda: logged() is not None, timeout=5), server.log()[-2000:]
    record = logged()
    assert record is not None
    return record


@pytest.mark.parametrize(
    ("response_name", "status", "method", "path"),
    [
        ("malformed", 400, "-", "-"),
        ("too_many_headers", 431, "POST", "/api/task_runs/filter"),
        ("too_slow", 408, "-", "-"),
    ],
)
def test_a_refused_request_has_an_id_and_a_log_line(
    refused: Refused, response_name: str, status: int, method: str, path: str
) -> None:
    response: RawResponse = getattr(refused, response_name)
    request_id = response.headers.get("x-request-id", "")

    assert response.status == status
    assert len(request_id) == 32
    line = request_line(refused.server, request_id)
    assert (line["method"], line["path"], line["status"], line["operation_id"]) == (
        method,
        path,
        status,
        None,
    )
    assert 0 <= line["duration_ms"] < 10_000


def test_refused_requests_are_counted(refused: Refused) -> None:
    time.sleep(0.1)
    requests = Scrape.of(refused.server).requests()

    assert (requests["none", 400], requests["none", 431], requests["none", 408]) == (1, 1, 1)

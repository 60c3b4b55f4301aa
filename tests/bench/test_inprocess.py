"""The in-process bench's requests: each operation's are answered 2xx, a filter with a full
page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.db.migrate import upgrade
from app.main import create_app
from app.settings import Settings
from tests.bench.inprocess import (
    FILTER_PAGE,
    OPERATIONS,
    Driver,
    measure,
    requests_of,
    send_all,
)
from tests.support.databases import POSTGRES_ENV, postgres_server_url


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    upgrade(url)
    return Driver(create_app(Settings(database_url=url)))


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operations_requests_succeed(driver: Driver, operation: str) -> None:
    try:
        send_all(driver, requests_of(operation, driver, 3))
    finally:
        driver.close()


def test_a_filter_lists_a_full_page_of_running_runs(driver: Driver) -> None:
    try:
        [(method, path, body)] = set(requests_of("filter", driver, 2))
        status, answer = driver.request(method, path, body)
    finally:
        driver.close()

    runs = json.loads(answer)
    assert status == 200
    assert len(runs) == FILTER_PAGE
    assert {run["state_type"] for run in runs} == {"RUNNING"}


@pytest.mark.postgresql
def test_on_postgresql_the_servers_cpu_is_measured_beside_the_process() -> None:
    server = postgres_server_url()
    if server is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")

    costs = measure(["create", "read"], 20, timed=True, postgresql=server)

    assert set(costs) == {"create", "read"}
    for cost in costs.values():
        assert cost.process > 0
        assert cost.database is not None
    # Its processes run on this machine: a create makes the server work.
    create_on_the_server = costs["create"].database
    assert create_on_the_server is not None
    assert create_on_the_server > 0


def test_on_sqlite_there_is_no_servers_cpu() -> None:
    costs = measure(["health"], 5, timed=True)

    assert costs["health"].database is None

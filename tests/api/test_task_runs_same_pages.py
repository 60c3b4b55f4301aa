"""The same runs on SQLite and PostgreSQL give the same pages, for every sort and filter.

Both services are given identical runs (the same ids, names, tags and scheduled times),
with ties and NULLs in every sorted field, and asked the same questions. The PostgreSQL
database sorts text like English by default, unlike SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.db.migrate import upgrade
from app.main import create_app, database_of
from app.settings import Settings
from tests.support.api import set_state
from tests.support.databases import (
    POSTGRES_ENV,
    empty_database,
    postgres_database,
    postgres_server_url,
)
from tests.support.queries import at, filter_ids

pytestmark = pytest.mark.postgresql

SORTS = [
    "ID_DESC",
    "EXPECTED_START_TIME_ASC",
    "EXPECTED_START_TIME_DESC",
    "NAME_ASC",
    "NAME_DESC",
    "NEXT_SCHEDULED_START_TIME_ASC",
    "END_TIME_DESC",
    "DURATION_ASC",
    "DURATION_DESC",
]
NAMES = ["alpha", "Alpha", "beta", "é-run", "Ω", "b_%", "alpha", "ALPHA-2", "zeta", "Beta"]
FILTERS: list[dict[str, Any]] = [
    {},
    {"task_runs": {"name": {"like_": "ALPHA"}}},
    {"task_runs": {"name": {"like_": "_%"}}},
    {"task_runs": {"name": {"like_": "É"}}},
    {"task_runs": {"tags": {"all_": ["even", "third"]}}},
    {"task_runs": {"operator": "or_", "tags": {"is_null_": True}, "name": {"any_": ["zeta"]}}},
    {"task_runs": {"expected_start_time": {"after_": at(10), "before_": at(30)}}},
    {"task_runs": {"state": {"type": {"any_": ["PENDING"]}}}},
    {"flow_runs": {}},
]


def same_runs(client: TestClient) -> None:
    """Thirty runs, the same on every call: names and times repeat, some times are NULL."""
    flow_run = "8b1f4c56-0000-4000-8000-000000000001"
    for number in range(30):
        tags = [tag for tag, every in (("even", 2), ("third", 3)) if number % every == 0]
        run_id = str(uuid.UUID(int=number * 7919 % 30 + 1))
        body = {
            "id": run_id,
            "task_key": "same",
            "dynamic_key": str(number),
            "name": NAMES[number % len(NAMES)],
            "tags": tags,
            "flow_run_id": flow_run if number % 4 == 0 else None,
            "state": {
                "type": "SCHEDULED",
                "state_details": {"scheduled_time": at(number % 6 * 10)},
            },
        }
        response = client.post("/api/task_runs/", json=body)
        assert response.status_code == 201, response.text
        if number % 5 == 0:
            # Still expected at its time, but no longer scheduled: next_scheduled_start_time NULL.
            assert set_state(client, run_id, "PENDING", force=True).status_code == 201


@contextmanager
def natural_language_database() -> Iterator[str]:
    """A PostgreSQL database whose default collation sorts like English ("a" before "B"):
    the order must not depend on it.
    """
    server_url = postgres_server_url()
    assert server_url is not None
    english = (
        "TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    )
    with postgres_database(server_url, options=english) as url:
        yield url


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """A service on SQLite and one on PostgreSQL, each holding the same runs."""
    if postgres_server_url() is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    with ExitStack() as stack:
        made: dict[str, TestClient] = {}
        urls = {
            "sqlite": stack.enter_context(empty_database("sqlite", tmp_path_factory.mktemp("s"))),
            "postgresql": stack.enter_context(natural_language_database()),
        }
        for backend, url in urls.items():
            upgrade(url)
            application = create_app(Settings(database_url=url, validate_responses=True))
            stack.callback(database_of(application).dispose)
            made[backend] = stack.enter_context(application.test_client())
            same_runs(made[backend])
        yield made


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("body", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_both_databases_give_the_same_pages(
    clients: dict[str, TestClient], sort: str, body: dict[str, Any]
) -> None:
    pages = {
        backend: [
            filter_ids(client, body | {"sort": sort, "limit": 7, "offset": offset})
            for offset in range(0, 35, 7)
        ]
        for backend, client in clients.items()
    }

    assert pages["sqlite"] == pages["postgresql"]
    every = [run_id for page in pages["sqlite"] for run_id in page]
    assert len(every) == len(set(every))
    assert every == filter_ids(clients["sqlite"], body | {"sort": sort})

"""POST /task_runs/paginate through HTTP, on every database backend."""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import Connection
from starlette.testclient import TestClient

from app.db import task_run_queries
from app.db.database import Database
from app.db.tables import task_run
from tests.support.api import assert_validation_error
from tests.support.queries import PAGINATE, filter_runs, ids, new_run, task_runs
from tests.support.records import fresh_run


def paginate(client: TestClient, body: Any = None) -> dict[str, Any]:
    response = client.post(PAGINATE, json=body)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


class TestPaginateTaskRuns:
    def test_the_count_and_the_page_see_the_same_runs(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        new_run(client)
        counted = task_run_queries.count_task_runs

        def count_then_another_run_commits(connection: Connection, *args: Any) -> int:
            count = counted(connection, *args)
            # Committed by another connection between the two statements of the request.
            database.write(_insert_another_run)
            return count

        monkeypatch.setattr(task_run_queries, "count_task_runs", count_then_another_run_commits)

        page = paginate(client, {})

        assert page["count"] == len(page["results"]) == 1
        monkeypatch.undo()
        assert paginate(client, {})["count"] == 2

    def test_page_math(self, client: TestClient) -> None:
        runs = [new_run(client, tags=["t"]) for _ in range(5)]
        newest_first = sorted(ids(runs), reverse=True)

        pages = [paginate(client, {"limit": 2, "page": page}) for page in (1, 2, 3, 4)]

        assert [ids(page["results"]) for page in pages] == [
            newest_first[0:2],
            newest_first[2:4],
            newest_first[4:5],
            [],
        ]
        for number, page in enumerate(pages, start=1):
            assert {key: page[key] for key in ("count", "limit", "pages", "page")} == {
                "count": 5,
                "limit": 2,
                "pages": 3,
                "page": number,
            }

    def test_defaults_without_a_body(self, client: TestClient) -> None:
        run = new_run(client)

        response = client.post(PAGINATE)

        assert response.status_code == 200
        page = response.json()
        assert {key: page[key] for key in ("count", "limit", "pages", "page")} == {
            "count": 1,
            "limit": 200,
            "pages": 1,
            "page": 1,
        }
        assert ids(page["results"]) == [run["id"]]
        nulls = {"sort": None, "limit": None, "page": None, "task_runs": None, "other": 1}
        with_nulls = paginate(client, nulls)
        assert with_nulls | {"results": ids(with_nulls["results"])} == page | {
            "results": [run["id"]]
        }

    def test_results_are_full_task_runs_like_filter(self, client: TestClient) -> None:
        new_run(client, labels={"k": 1}, tags=["t"])

        (result,) = paginate(client)["results"]
        (filtered,) = filter_runs(client)

        assert set(result) == set(filtered)
        assert result["labels"] == {"k": 1}
        assert result["dynamic_key"] == filtered["dynamic_key"]

    def test_the_last_page_allowed_is_empty(self, client: TestClient) -> None:
        new_run(client)

        page = paginate(client, {"page": 10**12})

        assert (page["results"], page["count"], page["page"]) == ([], 1, 10**12)

    def test_no_runs_and_limit_zero(self, client: TestClient) -> None:
        assert paginate(client) | {"results": []} == {
            "results": [],
            "count": 0,
            "limit": 200,
            "pages": 0,
            "page": 1,
        }
        new_run(client)
        page = paginate(client, {"limit": 0})
        assert (page["results"], page["count"], page["pages"]) == ([], 1, 0)

    def test_filters_and_sorts_like_filter(self, client: TestClient) -> None:
        for name in ("c", "a", "b", "a"):
            new_run(client, name=name, tags=["t"] if name != "b" else [])

        body = {"sort": "NAME_DESC", "limit": 2, **task_runs(tags={"all_": ["t"]})}
        first, second = paginate(client, body | {"page": 1}), paginate(client, body | {"page": 2})

        assert ids(first["results"]) + ids(second["results"]) == ids(
            filter_runs(client, {k: v for k, v in body.items() if k != "limit"})
        )
        assert [run["name"] for run in first["results"] + second["results"]] == ["c", "a", "a"]
        assert (first["count"], first["pages"]) == (3, 2)

    @pytest.mark.parametrize(
        ("body", "loc", "kind"),
        [
            ({"page": 0}, ["body", "page"], "minimum"),
            ({"page": -1}, ["body", "page"], "minimum"),
            ({"limit": 201}, ["body", "limit"], "maximum"),
            ({"limit": -1}, ["body", "limit"], "minimum"),
            ({"page": 10**12 + 1}, ["body", "page"], "maximum"),
            ({"task_runs": {"unknown": {}}}, ["body", "task_runs", "unknown"], "extra_forbidden"),
        ],
    )
    def test_bounds_are_422(
        self, client: TestClient, body: dict[str, Any], loc: list[str], kind: str
    ) -> None:
        assert_validation_error(client.post(PAGINATE, json=body), loc, kind)


def _insert_another_run(connection: Connection) -> None:
    record = dataclasses.replace(fresh_run(), id=uuid4(), task_key=f"another-{uuid4()}")
    connection.execute(task_run.insert().values(**dataclasses.asdict(record)))

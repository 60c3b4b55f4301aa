"""Every query cell of the bench reads task runs through an index, on a loaded table.

The table is loaded by the bench's own loader (100,000 runs on PostgreSQL, fewer on SQLite,
whose plans do not depend on the table's size as much) and analysed; each cell's request
goes through the service in this process, and every SELECT it ran is explained with the
same parameters. A sequential scan of task_run (PostgreSQL), or a SCAN of it without an
index (SQLite), fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from connexion import FlaskApp
from sqlalchemy import func, select

from app.db.migrate import upgrade
from app.db.tables import task_run
from app.db.task_run_queries import name_contains
from app.main import database_of
from generated.models import StateType
from tests.bench.plans import (
    RequestPlans,
    Statement,
    explain,
    full_scans,
    index_walks,
    plans_of_request,
    service_in_process,
)
from tests.bench.queries import NAME_FRAGMENT, QueryCell, query_cells
from tests.bench.seed import MAX_TAGS, Dataset, seed
from tests.support.databases import POSTGRES_ENV, empty_database, postgres_server_url

RUNS = {"postgresql": 100_000, "sqlite": 20_000}
STATE_TYPES = [state_type.value for state_type in StateType]
_PLACEHOLDER = Dataset(
    runs=0,
    rows={},
    seconds=1,
    window_end=datetime(2026, 1, 1, tzinfo=UTC),
    flow_run_ids=("00000000-0000-0000-0000-000000000000",),
)
# The cells with criteria; q_paginate pages through every run (see its own test).
PAGINATE = "q_paginate"
FILTER_CELLS = [cell.name for cell in query_cells(_PLACEHOLDER) if cell.name != PAGINATE]


# What each database's plan of a name search names.
NAME_SEARCH_INDEXES = {
    "sqlite": "USING COVERING INDEX ix_task_run__id_name",
    "postgresql": "ix_task_run__lower_name_trgm",
}


@dataclass(frozen=True)
class Loaded:
    """The service in this process on a loaded database, and what was loaded."""

    backend: str
    app: FlaskApp
    dataset: Dataset

    def cell(self, name: str) -> QueryCell:
        return next(cell for cell in query_cells(self.dataset) if cell.name == name)


@pytest.fixture(
    scope="module",
    params=[pytest.param("postgresql", marks=pytest.mark.postgresql), "sqlite"],
)
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    """A migrated database of the backend with RUNS runs in it, analysed."""
    backend: str = request.param
    if backend == "postgresql" and postgres_server_url() is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    with empty_database(backend, tmp_path_factory.mktemp(f"plans-{backend}")) as url:
        upgrade(url)
        dataset = seed(url, runs=RUNS[backend])
        with service_in_process(url) as app:
            yield Loaded(backend=backend, app=app, dataset=dataset)


def shown(plans: RequestPlans) -> str:
    """Every statement and its plan, for the failure message."""
    return "\n\n".join(
        f"{statement.sql}\n" + "\n".join(statement.plan) for statement in plans.statements
    )


class TestQueryCellPlans:
    @pytest.mark.parametrize("name", FILTER_CELLS)
    def test_cell_reads_task_runs_through_an_index(self, loaded: Loaded, name: str) -> None:
        cell = loaded.cell(name)

        plans = plans_of_request(loaded.app, cell.path, cell.body)

        assert plans.status == 200
        assert any("task_run" in statement.sql for statement in plans.statements), shown(plans)
        assert plans.full_scans == [], shown(plans)

    def test_paginate_reads_its_page_through_an_index(self, loaded: Loaded) -> None:
        # Paging through every run counts every run, and a count without a criterion reads
        # the whole table whatever the indexes (PostgreSQL scans it); the page must not.
        cell = loaded.cell(PAGINATE)

        plans = plans_of_request(loaded.app, cell.path, cell.body)

        assert plans.status == 200
        pages = [
            s for s in plans.statements if not s.sql.lstrip().upper().startswith("SELECT COUNT")
        ]
        assert pages, shown(plans)
        assert [scan for page in pages for scan in page.full_scans] == [], shown(plans)

    def test_a_name_search_reads_the_names_from_an_index(self, loaded: Loaded) -> None:
        # SQLite: in id order until the page is full, without looking each run up in the
        # table. PostgreSQL: through its trigram index, not by walking the runs in id order
        # (for a rare name, most of the table).
        expected_index = NAME_SEARCH_INDEXES[loaded.backend]
        cell = loaded.cell("q_name_like")

        plans = plans_of_request(loaded.app, cell.path, cell.body)

        plan = "\n".join(line for statement in plans.statements for line in statement.plan)
        assert expected_index in plan, shown(plans)

    def test_postgresql_expects_about_as_many_runs_as_a_name_search_matches(
        self, loaded: Loaded
    ) -> None:
        # Its plan depends on that estimate. From the default 100-bucket histogram of the
        # names it is 10 or 1,010 here, where about 100 match: off tenfold either way.
        if loaded.backend != "postgresql":
            pytest.skip("the estimate of PostgreSQL's planner")
        engine = database_of(loaded.app).engine
        matching = select(task_run.c.id).where(name_contains(NAME_FRAGMENT))
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE task_run")
            count = connection.execute(select(func.count()).select_from(matching.subquery()))
            actual = count.scalar_one()
            compiled = matching.compile(engine)
            plan = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).all()
        estimate = re.search(r"rows=(\d+)", plan[0][0])
        assert estimate is not None, plan
        expected = int(estimate.group(1))

        assert actual > 0
        assert actual / 2 <= expected <= actual * 2, plan

    def test_a_criterion_without_an_index_is_flagged(self, loaded: Loaded) -> None:
        # The check above must be able to fail: total_run_time has no index.
        engine = database_of(loaded.app).engine
        placeholder = "?" if loaded.backend == "sqlite" else "%(seconds)s"
        parameters: object = (1.0,) if loaded.backend == "sqlite" else {"seconds": 1.0}
        sql = f"SELECT id FROM task_run WHERE total_run_time > {placeholder}"

        plan = explain(engine, Statement(sql, parameters))

        assert full_scans(engine.dialect.name, sql, plan) != [], plan


LOADER_RUNS = 3_000


@pytest.fixture(scope="module")
def small_load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlaskApp, Dataset]]:
    """The service on an SQLite database the loader filled with LOADER_RUNS runs."""
    with empty_database("sqlite", tmp_path_factory.mktemp("loader")) as url:
        upgrade(url)
        dataset = seed(url, runs=LOADER_RUNS)
        with service_in_process(url) as app:
            yield app, dataset


class TestLoader:
    """The loaded runs are what the service itself would serve, with the promised spread."""

    def test_every_run_is_served_with_its_states(
        self, small_load: tuple[FlaskApp, Dataset]
    ) -> None:
        app, _dataset = small_load
        with app.test_client() as client:
            runs = client.post("/api/task_runs/filter", json={"limit": 5}).json()
            assert client.post("/api/task_runs/count", json={}).json() == LOADER_RUNS
            for run in runs:
                assert client.get(f"/api/task_runs/{run['id']}").json() == run
                states = client.get("/api/task_run_states/", params={"task_run_id": run["id"]})
                assert states.json()[-1]["id"] == run["state"]["id"]

    def test_runs_spread_over_states_tags_and_flow_runs(
        self, small_load: tuple[FlaskApp, Dataset]
    ) -> None:
        app, dataset = small_load

        def count(criteria: dict[str, object]) -> int:
            response = client.post("/api/task_runs/count", json={"task_runs": criteria})
            assert response.status_code == 200, response.text
            number: int = response.json()
            return number

        with app.test_client() as client:
            for state_type in STATE_TYPES:
                assert count({"state": {"type": {"any_": [state_type]}}}) > 0, state_type
            assert count({"tags": {"all_": list(dataset.tags[:2])}}) > 0
            assert count({"tags": {"is_null_": True}}) > 0
            assert 0 < count({"flow_run_id": {"is_null_": True}}) < LOADER_RUNS / 10
            assert count({"flow_run_id": {"any_": [dataset.flow_run_ids[0]]}}) > 1
            tagged = client.post(
                "/api/task_runs/filter", json={"task_runs": {"tags": {"is_null_": False}}}
            ).json()
            assert {tag for run in tagged for tag in run["tags"]} <= set(dataset.tags)
            assert max(len(run["tags"]) for run in tagged) <= MAX_TAGS


class TestFullScanDetection:
    @pytest.mark.parametrize(
        ("plan", "flagged"),
        [
            (["SCAN task_run"], ["SCAN task_run"]),
            (["SCAN run"], ["SCAN run"]),
            (["SCAN task_run USING INDEX ix_task_run__name_id"], []),
            (["SEARCH run USING INDEX ix_task_run__state_type_expected_start_time_id"], []),
            (["SCAN task_run_tag"], []),
        ],
    )
    def test_sqlite(self, plan: list[str], flagged: list[str]) -> None:
        sql = "SELECT run.id FROM task_run AS run JOIN task_run_tag ON true"

        assert full_scans("sqlite", sql, plan) == flagged

    @pytest.mark.parametrize(
        ("line", "flagged"),
        [
            ("Seq Scan on task_run  (cost=0.00..6194.00 rows=99990 width=16)", True),
            ("  ->  Parallel Seq Scan on task_run run  (cost=0.00..10.00 rows=1 width=8)", True),
            ("Index Scan using ix_task_run__name_id on task_run  (cost=0.42..8.44)", False),
            ("Seq Scan on task_run_tag  (cost=0.00..10.00 rows=1 width=8)", False),
        ],
    )
    def test_postgresql(self, line: str, flagged: bool) -> None:
        assert bool(full_scans("postgresql", "SELECT 1", [line])) == flagged


class TestIndexWalkDetection:
    @pytest.mark.parametrize(
        ("plan", "walks"),
        [
            # A name search walking the runs by id until the page is full.
            (
                [
                    "Limit  (cost=0.42..1682.33 rows=200 width=16)",
                    "  ->  Index Scan Backward using pk_task_run on task_run task_run_1"
                    "  (cost=0.42..84945.06 rows=10101 width=16)",
                    "        Filter: (lower(name) ~~ '%task-417-%'::text)",
                ],
                [1],
            ),
            # A page of every run, in id order.
            (
                [
                    "Limit  (cost=602.59..608.67 rows=200 width=16)",
                    "  ->  Index Only Scan Backward using pk_task_run on task_run task_run_1"
                    "  (cost=0.42..30412.20 rows=999985 width=16)",
                    "  ->  Index Scan using pk_task_run on task_run  (cost=0.42..8.34 rows=1)",
                    "        Index Cond: (id = task_run_1.id)",
                ],
                [1],
            ),
            (
                [
                    "Index Scan using ix_task_run__state_name_id on task_run  (cost=0.42..8.44)",
                    "  Index Cond: (state_name = 'Failed'::text)",
                    "  Filter: (tags IS NOT NULL)",
                ],
                [],
            ),
            (["Bitmap Index Scan on ix_task_run__lower_name_trgm  (cost=0.00..108.75)"], []),
            (["Index Scan using pk_task_run_state on task_run_state  (cost=0.43..1.24)"], []),
        ],
    )
    def test_postgresql(self, plan: list[str], walks: list[int]) -> None:
        assert index_walks("postgresql", "SELECT 1", plan) == [plan[n].strip() for n in walks]

"""Reads and lists of runs (filter, paginate) give each run byte for byte as its model does.

They build their JSON from the rows (app/services/task_run_json.py); a create answers with
the run's model (TaskRun built from the stored records). The runs here carry every kind of
field whose JSON could come out differently.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection
from starlette.testclient import TestClient

from app.db import task_runs as rows
from app.db.database import Database
from app.db.tables import task_run_state
from app.services import clock, task_run_queries, task_run_states, task_runs
from generated import models
from tests.support.api import create_run, set_state
from tests.support.queries import FILTER, PAGINATE
from tests.support.queries import task_runs as task_runs_body

# Every estimate of the runs below is computed for this instant.
NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (task_runs, task_run_queries):
        monkeypatch.setattr(module, "utcnow", lambda: NOW)


def varied_runs(client: TestClient) -> list[str]:
    """Runs with every kind of field a list's JSON could write differently; their ids."""
    key = uuid.uuid4().hex
    plain = create_run(client, task_key=key, dynamic_key="plain")
    text = create_run(
        client,
        task_key=key,
        dynamic_key="text",
        name='naïve "quoted" \\ back\tslash\n\u2028 日本 \x7f \x1f',
        tags=["ü-tag", "b", "a"],
        labels={"yes": True, "int": 12345678901234, "small": 1e-7, "big": 1e16, "s": "é"},
        cache_key="key-\u00e9",
        cache_expiration="2030-01-01T05:00:00+05:00",
        task_version="1.0",
    )
    policies = [
        create_run(
            client,
            task_key=key,
            dynamic_key=f"policy-{n}",
            empirical_policy=policy,
            task_inputs=inputs,
        )
        for n, (policy, inputs) in enumerate(
            [
                ({"retries": 3, "retry_delay": [1, 2.5], "retry_jitter_factor": 0.5}, {}),
                (
                    {"max_retries": 2, "retry_delay_seconds": 3},
                    {
                        "x": [{"input_type": "task_run", "id": str(uuid.uuid4())}],
                        "y": [{"input_type": "parameter", "name": "p"}],
                        "z": [{"input_type": "constant", "type": "int"}],
                    },
                ),
            ]
        )
    ]
    running = create_run(client, task_key=key, dynamic_key="running")
    assert set_state(client, running["id"], "RUNNING").status_code == 201
    late = create_run(
        client,
        task_key=key,
        dynamic_key="late",
        state={
            "type": "SCHEDULED",
            "state_details": {"scheduled_time": "2026-05-31T14:00:00+02:00"},
        },
    )
    done = create_run(client, task_key=key, dynamic_key="done")
    assert set_state(client, done["id"], "RUNNING").status_code == 201
    completed = set_state(
        client,
        done["id"],
        "COMPLETED",
        message="done ✓\n",
        data={"n": [1, 1.5, -0.0, 1e300, 123456789012345678901234567890], "s": "é\u0001"},
    )
    assert completed.status_code == 201, completed.text
    bare = [completed_with(client, key, f"bare-{n}", data) for n, data in enumerate(BARE_DATA)]
    runs = [plain, text, *policies, running, late, done, *bare]
    return [run["id"] for run in runs]


# Results that are bare JSON values: SQLite returns a number stored in a JSON column as one.
BARE_DATA = [5, -0.0, 0.30000000000000004, 1e300, 123456789012345678901234567890, "5", True]


def completed_with(client: TestClient, key: str, dynamic_key: str, data: Any) -> dict[str, Any]:
    """A run COMPLETED with `data` as its result."""
    run = create_run(client, task_key=key, dynamic_key=dynamic_key)
    assert set_state(client, run["id"], "RUNNING").status_code == 201
    response = set_state(client, run["id"], "COMPLETED", data=data)
    assert response.status_code == 201, response.text
    return run


def store_details(database: Database, state_id: str, details: dict[str, Any]) -> None:
    """Replace a stored state's details, as a row written by other means than this service
    (fewer fields, other offsets) would hold them.
    """

    def write(connection: Connection) -> None:
        connection.execute(
            task_run_state.update()
            .where(task_run_state.c.id == uuid.UUID(state_id))
            .values(state_details=details)
        )

    database.write(write)


def read_bytes(client: TestClient, run_id: str) -> bytes:
    response = client.get(f"/api/task_runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.content


def model_bytes(database: Database, run_id: str) -> bytes:
    """The stored run's JSON as its model gives it, at NOW."""
    with database.snapshot() as connection:
        stored = rows.find_task_run(connection, uuid.UUID(run_id))
    assert stored is not None
    return task_runs.task_run_model(stored.run, stored.state, now=NOW).model_dump_json().encode()


@pytest.mark.usefixtures("fixed_clock")
class TestReadsAndListsAnswerAsModels:
    def test_read_gives_each_run_as_its_model(self, client: TestClient, database: Database) -> None:
        for run_id in varied_runs(client):
            assert read_bytes(client, run_id) == model_bytes(database, run_id)

    def test_filter_gives_each_run_as_its_model(
        self, client: TestClient, database: Database
    ) -> None:
        run_ids = sorted(varied_runs(client), reverse=True)

        response = client.post(
            FILTER, json={**task_runs_body(id={"any_": run_ids}), "sort": "ID_DESC"}
        )

        assert response.status_code == 200, response.text
        models_json = [model_bytes(database, run_id) for run_id in run_ids]
        assert response.content == b"[" + b",".join(models_json) + b"]"

    def test_details_not_stored_as_the_model_dumps_them_are_given_as_it_does(
        self, client: TestClient, database: Database
    ) -> None:
        run = create_run(client, task_key=uuid.uuid4().hex, dynamic_key="details")
        store_details(
            database,
            run["state_id"],
            {"scheduled_time": "2026-05-31T14:00:00.500+02:00", "task_run_id": run["id"]},
        )

        response = client.post(FILTER, json=task_runs_body(id={"any_": [run["id"]]}))

        assert response.status_code == 200, response.text
        read = read_bytes(client, run["id"])
        assert read == model_bytes(database, run["id"])
        assert response.content == b"[" + read + b"]"
        details = response.json()[0]["state"]["state_details"]
        # Through the model: its defaults filled in, the instant written in its format.
        assert details["deferred"] is False
        assert details["scheduled_time"] == "2026-05-31T14:00:00.500000+02:00"

    def test_paginate_gives_the_page_as_its_model_does(
        self, client: TestClient, database: Database
    ) -> None:
        run_ids = sorted(varied_runs(client), reverse=True)
        body: dict[str, Any] = {
            **task_runs_body(id={"any_": run_ids}),
            "sort": "ID_DESC",
            "limit": 3,
            "page": 2,
        }

        response = client.post(PAGINATE, json=body)

        assert response.status_code == 200, response.text
        page = models.TaskRunPaginationResponse(
            results=[
                models.TaskRun.model_validate_json(model_bytes(database, run_id))
                for run_id in run_ids[3:6]
            ],
            count=len(run_ids),
            limit=3,
            pages=math.ceil(len(run_ids) / 3),
            page=2,
        )
        assert response.content == page.model_dump_json().encode()


class TestEstimatesOfAList:
    @pytest.mark.parametrize("path", [FILTER, PAGINATE])
    def test_a_run_started_after_the_lists_first_clock_reading_shows_a_run_time_of_its_own(
        self,
        client: TestClient,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        path: str,
    ) -> None:
        run = create_run(client)
        real_clock = clock.utcnow
        started: list[str] = []

        def clock_then_start() -> datetime:
            # Another request's proposal commits right after the list first reads the clock.
            now = real_clock()
            if not started:
                running = models.StateCreate(type=models.StateType.RUNNING)
                outcome = task_run_states.propose_state(
                    database, task_run_id=uuid.UUID(run["id"]), proposed=running, force=False
                )
                started.append("written" if outcome.written else "not written")
            return now

        monkeypatch.setattr(task_run_queries, "utcnow", clock_then_start)
        answer = client.post(path, json={}).json()

        [listed] = answer if path == FILTER else answer["results"]
        assert started == ["written"]
        # A paginate reads its page after its count, in the count's snapshot: whether the
        # run shows as started depends on when its snapshot began, its estimate does not.
        if path == FILTER:
            assert listed["state_type"] == "RUNNING"
        assert listed["estimated_run_time"] >= listed["total_run_time"] == 0.0


class TestStateData:
    @pytest.mark.parametrize(
        "data",
        [123456789012345678901234567890, 18446744073709551617, 1.829402849984213e-298, -0.0, 1e16],
        ids=str,
    )
    def test_a_bare_number_reads_back_as_it_was_sent(self, client: TestClient, data: Any) -> None:
        created = create_run(client, state={"type": "COMPLETED", "data": data})

        read = client.get(f"/api/task_runs/{created['id']}").json()
        [listed] = client.post(FILTER, json=task_runs_body(id={"any_": [created["id"]]})).json()
        [state] = client.get("/api/task_run_states/", params={"task_run_id": created["id"]}).json()

        for answer in (created["state"], read["state"], listed["state"], state):
            assert repr(answer["data"]) == repr(data)

"""The Task Runs operations through HTTP, on every database backend."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection
from starlette.testclient import TestClient

from app.db import task_runs as run_rows
from app.db.database import Database
from app.db.tables import task_run
from app.main import create_app
from app.services import task_run_queries, task_runs
from app.settings import Settings
from generated import models
from tests.support.api import (
    CREATE,
    assert_validation_error,
    create,
    create_run,
    read_run,
    set_state,
    states_of,
    wide_text,
    without_estimates,
)
from tests.support.databases import record_writes

TWO_WORD_NAME = re.compile(r"^[a-z]+-[a-z]+$")
TERMINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
# Over the 100-byte limits some tests set.
LARGE_BODY = {"task_key": "t" * 200, "dynamic_key": "d"}


def nested(levels: int) -> Any:
    """A value nesting `levels` arrays and objects, alternately."""
    value: Any = "leaf"
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


class TestCreateTaskRun:
    def test_minimal_create_answers_201_with_a_pending_run(self, client: TestClient) -> None:
        response = create(client)

        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        run = response.json()
        uuid.UUID(run["id"])
        assert TWO_WORD_NAME.match(run["name"])
        assert (run["task_key"], run["dynamic_key"], run["flow_run_id"]) == ("my-task", "0", None)
        assert run["state_type"] == "PENDING"
        assert run["state_name"] == "Pending"
        assert run["state"]["type"] == "PENDING"
        assert run["state"]["name"] == "Pending"
        assert run["state_id"] == run["state"]["id"]
        assert run["state"]["state_details"]["task_run_id"] == run["id"]
        assert run["expected_start_time"] == run["state"]["timestamp"]
        assert run["created"].endswith("Z")
        assert run["created"] == run["updated"]
        assert run["empirical_policy"] == {
            "max_retries": 0,
            "retry_delay_seconds": 0.0,
            "retries": None,
            "retry_delay": None,
            "retry_jitter_factor": None,
        }
        assert (run["tags"], run["labels"], run["task_inputs"]) == ([], {}, {})
        assert (run["run_count"], run["flow_run_run_count"], run["total_run_time"]) == (0, 0, 0.0)
        assert run["start_time"] is None
        assert run["end_time"] is None
        assert run["next_scheduled_start_time"] is None
        assert run["estimated_run_time"] == 0.0
        assert run["estimated_start_time_delta"] >= 0.0

    def test_same_key_returns_the_existing_run_unchanged_with_200(self, client: TestClient) -> None:
        first = create(client, name="first", tags=["a"]).json()

        second = create(
            client, name="second", tags=["b"], labels={"x": 1}, state={"type": "RUNNING"}
        )

        assert second.status_code == 200
        assert without_estimates(second.json()) == without_estimates(first)

    def test_key_includes_the_flow_run(self, client: TestClient) -> None:
        flow_run_a, flow_run_b = str(uuid.uuid4()), str(uuid.uuid4())

        in_a = create(client, flow_run_id=flow_run_a)
        in_a_again = create(client, flow_run_id=flow_run_a)
        in_b = create(client, flow_run_id=flow_run_b)
        without_flow_run = create(client)
        without_flow_run_again = create(client, flow_run_id=None)

        assert [r.status_code for r in (in_a, in_a_again, in_b, without_flow_run)] == [
            201,
            200,
            201,
            201,
        ]
        assert without_flow_run_again.status_code == 200
        assert in_a_again.json()["id"] == in_a.json()["id"]
        assert without_flow_run_again.json()["id"] == without_flow_run.json()["id"]
        assert len({r.json()["id"] for r in (in_a, in_b, without_flow_run)}) == 3

    @pytest.mark.parametrize("dynamic_key", ["1", ""])
    def test_key_includes_task_and_dynamic_keys(self, client: TestClient, dynamic_key: str) -> None:
        first = create(client)
        other_dynamic_key = create(client, dynamic_key=dynamic_key)
        other_task_key = create(client, task_key="other")

        assert (other_dynamic_key.status_code, other_task_key.status_code) == (201, 201)
        assert len({r.json()["id"] for r in (first, other_dynamic_key, other_task_key)}) == 3

    def test_client_supplied_id_is_used(self, client: TestClient) -> None:
        wanted = str(uuid.uuid4())

        response = create(client, id=wanted)

        assert response.status_code == 201
        assert response.json()["id"] == wanted
        assert client.get(f"{CREATE}{wanted}").status_code == 200

    def test_existing_key_wins_over_a_client_supplied_id(self, client: TestClient) -> None:
        existing = create(client).json()

        response = create(client, id=str(uuid.uuid4()))

        assert response.status_code == 200
        assert response.json()["id"] == existing["id"]

    @pytest.mark.parametrize("flow_run_id", [None, "6b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b2"])
    def test_id_of_another_run_is_a_409(self, client: TestClient, flow_run_id: str | None) -> None:
        taken = create(client).json()["id"]

        response = create(client, id=taken, task_key="another-task", flow_run_id=flow_run_id)

        assert response.status_code == 409
        assert response.json() == {
            "detail": f"Task run id {taken} is already used by another task run."
        }
        assert create(client, task_key="another-task", flow_run_id=flow_run_id).status_code == 201

    def test_a_key_freed_between_the_insert_and_its_read_is_inserted_again(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = create(client).json()
        insert = run_rows.insert_task_run_with_first_state

        def insert_then_lose_the_holder(connection: Connection, *rows: Any) -> bool:
            inserted = insert(connection, *rows)
            if not inserted:
                # Another request deletes the run that holds the key, before it is read.
                connection.execute(task_run.delete().where(task_run.c.id == uuid.UUID(first["id"])))
            return inserted

        monkeypatch.setattr(
            run_rows, "insert_task_run_with_first_state", insert_then_lose_the_holder
        )

        response = create(client)

        assert response.status_code == 201, response.text
        assert response.json()["id"] != first["id"]

    @pytest.mark.parametrize("name", [{}, {"name": None}, {"name": ""}])
    def test_random_two_word_name_when_missing_null_or_empty(
        self, client: TestClient, name: dict[str, Any]
    ) -> None:
        assert TWO_WORD_NAME.match(create(client, **name).json()["name"])

    def test_given_name_is_kept(self, client: TestClient) -> None:
        assert create(client, name="my-task-run").json()["name"] == "my-task-run"

    def test_given_pending_state_name_is_kept(self, client: TestClient) -> None:
        run = create(client, state={"type": "PENDING", "name": "Waiting", "message": "hi"}).json()

        assert run["state_name"] == run["state"]["name"] == "Waiting"
        assert run["state"]["message"] == "hi"

    @pytest.mark.parametrize(
        ("state_type", "default_name"),
        [("PAUSED", "Paused"), ("CANCELLING", "Cancelling"), ("PENDING", "Pending")],
    )
    def test_waiting_states_set_only_the_expected_start(
        self, client: TestClient, state_type: str, default_name: str
    ) -> None:
        run = create(client, state={"type": state_type}).json()

        assert (run["state_type"], run["state_name"]) == (state_type, default_name)
        assert run["expected_start_time"] == run["state"]["timestamp"]
        assert (run["start_time"], run["end_time"], run["next_scheduled_start_time"]) == (
            None,
            None,
            None,
        )
        assert run["run_count"] == 0

    def test_running_state_starts_the_run(self, client: TestClient) -> None:
        run = create(client, state={"type": "RUNNING"}).json()

        timestamp = run["state"]["timestamp"]
        assert (run["state_type"], run["state_name"]) == ("RUNNING", "Running")
        assert run["start_time"] == run["expected_start_time"] == timestamp
        assert run["end_time"] is None
        assert run["run_count"] == 1
        assert run["estimated_start_time_delta"] == 0.0

    @pytest.mark.parametrize("state_type", TERMINAL)
    def test_terminal_state_starts_and_ends_the_run(
        self, client: TestClient, state_type: str
    ) -> None:
        run = create(client, state={"type": state_type}).json()

        timestamp = run["state"]["timestamp"]
        assert run["state_name"] == state_type.title()
        assert run["start_time"] == run["end_time"] == run["expected_start_time"] == timestamp
        assert run["run_count"] == 0
        assert run["estimated_start_time_delta"] == 0.0

    def test_scheduled_state_with_a_time_schedules_the_run(self, client: TestClient) -> None:
        due = "2031-05-04T10:00:00+02:00"

        run = create(
            client, state={"type": "SCHEDULED", "state_details": {"scheduled_time": due}}
        ).json()

        assert run["expected_start_time"] == "2031-05-04T08:00:00Z"
        assert run["next_scheduled_start_time"] == "2031-05-04T08:00:00Z"
        assert run["state"]["state_details"]["scheduled_time"] == "2031-05-04T08:00:00Z"
        assert run["estimated_start_time_delta"] == 0.0
        assert run["start_time"] is None

    def test_scheduled_state_without_a_time_is_due_now(self, client: TestClient) -> None:
        run = create(client, state={"type": "SCHEDULED"}).json()

        timestamp = run["state"]["timestamp"]
        assert run["state"]["state_details"]["scheduled_time"] == timestamp
        assert run["expected_start_time"] == run["next_scheduled_start_time"] == timestamp

    @pytest.mark.parametrize(
        "data",
        [{"a": 1, "nested": [1, 2.5, None, "x"]}, [1, 2], "text", 7, {"type": "unpersisted"}],
    )
    def test_state_data_is_stored_and_returned(self, client: TestClient, data: Any) -> None:
        response = create(client, state={"type": "COMPLETED", "data": data})

        assert response.status_code == 201
        assert response.json()["state"]["data"] == data
        read = client.get(f"{CREATE}{response.json()['id']}").json()
        assert read["state"]["data"] == data

    def test_state_details_take_the_runs_ids_and_drop_unknown_keys(
        self, client: TestClient
    ) -> None:
        flow_run_id = str(uuid.uuid4())
        details = {
            "task_run_id": str(uuid.uuid4()),
            "flow_run_id": str(uuid.uuid4()),
            "deferred": None,
            "cache_key": "k",
            "not_a_known_key": 1,
        }

        run = create(
            client, flow_run_id=flow_run_id, state={"type": "PENDING", "state_details": details}
        ).json()

        stored = run["state"]["state_details"]
        assert (stored["task_run_id"], stored["flow_run_id"]) == (run["id"], flow_run_id)
        assert stored["deferred"] is None
        assert stored["cache_key"] == "k"
        assert "not_a_known_key" not in stored

    def test_deprecated_policy_fields_fill_retries_and_delay(self, client: TestClient) -> None:
        run = create(client, empirical_policy={"max_retries": 2, "retry_delay_seconds": 4}).json()

        policy = run["empirical_policy"]
        assert (policy["retries"], policy["retry_delay"]) == (2, 4)
        assert (policy["max_retries"], policy["retry_delay_seconds"]) == (2, 4)

    def test_deprecated_policy_fields_do_not_override_new_ones(self, client: TestClient) -> None:
        policy = {"max_retries": 2, "retry_delay_seconds": 4, "retries": 5, "retry_delay": [1, 2]}

        stored = create(client, empirical_policy=policy).json()["empirical_policy"]

        assert (stored["retries"], stored["retry_delay"]) == (5, [1, 2])

    def test_policy_keeps_fifty_delays_and_a_zero_jitter(self, client: TestClient) -> None:
        policy = {"retries": 3, "retry_delay": list(range(50)), "retry_jitter_factor": 0}

        stored = create(client, empirical_policy=policy).json()["empirical_policy"]

        assert stored["retry_delay"] == list(range(50))
        assert stored["retry_jitter_factor"] == 0

    def test_labels_name_the_flow_run_and_client_labels_win(self, client: TestClient) -> None:
        flow_run_id = str(uuid.uuid4())

        with_flow_run = create(client, flow_run_id=flow_run_id, labels={"team": "a"}).json()
        overridden = create(
            client, task_key="t2", flow_run_id=flow_run_id, labels={"prefect.flow-run.id": "x"}
        ).json()
        autonomous = create(client, task_key="t3", labels=None).json()

        assert with_flow_run["labels"] == {"prefect.flow-run.id": flow_run_id, "team": "a"}
        assert overridden["labels"] == {"prefect.flow-run.id": "x"}
        assert autonomous["labels"] == {}

    def test_tags_inputs_cache_and_version_round_trip(self, client: TestClient) -> None:
        inputs = {
            "x": [{"input_type": "task_run", "id": str(uuid.uuid4())}],
            "y": [
                {"input_type": "flow_run", "id": str(uuid.uuid4())},
                {"input_type": "parameter", "name": "p"},
                {"input_type": "constant", "type": "int"},
            ],
            "__parents__": [],
        }

        run = create(
            client,
            tags=["b", "a", "b"],
            task_inputs=inputs,
            cache_key="k" * 2000,
            cache_expiration="2030-01-01T02:00:00+02:00",
            task_version="1.2",
        ).json()

        assert run["tags"] == ["b", "a", "b"]
        assert run["task_inputs"] == inputs
        assert run["cache_key"] == "k" * 2000
        assert run["cache_expiration"] == "2030-01-01T00:00:00Z"
        assert run["task_version"] == "1.2"

    def test_an_instant_before_year_one_is_stored_as_the_earliest(self, client: TestClient) -> None:
        run = create(client, cache_expiration="0001-01-01T00:00:00+00:03").json()

        assert run["cache_expiration"] == "0001-01-01T00:00:00Z"

    def test_a_leap_second_is_valid_rfc_3339_but_not_a_storable_time(
        self, client: TestClient
    ) -> None:
        response = create(client, cache_expiration="2016-12-31T23:59:60Z")

        body = assert_validation_error(
            response, ["body", "cache_expiration"], "datetime_from_date_parsing"
        )
        assert body["request_body"]["cache_expiration"] == "2016-12-31T23:59:60Z"

    def test_indexed_text_at_its_bounds_is_stored_in_any_characters(
        self, client: TestClient
    ) -> None:
        # Four bytes each in UTF-8, not compressible: the most an index entry on PostgreSQL
        # must hold.
        fields = {
            "name": wide_text(600, seed=1),
            "task_key": wide_text(300, seed=2),
            "dynamic_key": wide_text(350, seed=3),
            "tags": [wide_text(600, seed=4), wide_text(599, seed=5)],
            "flow_run_id": str(uuid.uuid4()),
        }
        state = {"type": "PENDING", "name": wide_text(600, seed=6)}

        created = create(client, state=state, **fields)

        assert created.status_code == 201, created.text
        run = client.get(f"{CREATE}{created.json()['id']}").json()
        assert {name: run[name] for name in fields} == fields
        assert run["state_name"] == state["name"]
        assert create(client, state=state, **fields).status_code == 200

    def test_read_only_fields_are_rejected(self, client: TestClient) -> None:
        assert_validation_error(
            create(client, created="2020-01-01T00:00:00Z"), ["body", "created"], "extra_forbidden"
        )

    @pytest.mark.parametrize(
        ("fields", "loc", "error_type"),
        [
            ({"state": {"type": "BOGUS"}}, ["body", "state", "type"], "enum"),
            ({"state": {"type": "pending"}}, ["body", "state", "type"], "enum"),
            ({"state": {"type": "PENDING", "id": "x"}}, ["body", "state", "id"], "extra_forbidden"),
            ({"state": {}}, ["body", "state", "type"], "missing"),
            ({"foo": 1}, ["body", "foo"], "extra_forbidden"),
            ({"id": "not-a-uuid"}, ["body", "id"], "format"),
            ({"flow_run_id": "123"}, ["body", "flow_run_id"], "format"),
            ({"task_key": 1}, ["body", "task_key"], "type"),
            ({"task_key": "a\x00b"}, ["body", "task_key"], "pattern"),
            ({"name": 5}, ["body", "name"], "type"),
            ({"tags": ["a", 1]}, ["body", "tags", 1], "type"),
            ({"tags": "abc"}, ["body", "tags"], "type"),
            ({"labels": {"a": [1]}}, ["body", "labels", "a"], "type"),
            ({"cache_key": "k" * 2001}, ["body", "cache_key"], "maxLength"),
            ({"name": "n" * 601}, ["body", "name"], "maxLength"),
            ({"task_key": "k" * 301}, ["body", "task_key"], "maxLength"),
            ({"dynamic_key": "d" * 351}, ["body", "dynamic_key"], "maxLength"),
            ({"tags": ["t" * 601]}, ["body", "tags", 0], "maxLength"),
            (
                {"state": {"type": "PENDING", "name": "s" * 601}},
                ["body", "state", "name"],
                "maxLength",
            ),
            ({"cache_expiration": "yesterday"}, ["body", "cache_expiration"], "format"),
            ({"cache_expiration": "2030-01-01T00:00:00"}, ["body", "cache_expiration"], "format"),
            ({"empirical_policy": None}, ["body", "empirical_policy"], "type"),
            (
                {"empirical_policy": {"retries": "5"}},
                ["body", "empirical_policy", "retries"],
                "type",
            ),
            (
                {"empirical_policy": {"retries": True}},
                ["body", "empirical_policy", "retries"],
                "type",
            ),
            (
                {"empirical_policy": {"retry_delay": list(range(51))}},
                ["body", "empirical_policy", "retry_delay"],
                "maxItems",
            ),
            (
                {"empirical_policy": {"retry_jitter_factor": -0.5}},
                ["body", "empirical_policy", "retry_jitter_factor"],
                "minimum",
            ),
            (
                {"task_inputs": {"x": [{"input_type": "bogus", "name": "p"}]}},
                ["body", "task_inputs", "x", 0, "input_type"],
                "const",
            ),
            ({"task_inputs": None}, ["body", "task_inputs"], "type"),
            (
                {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "soon"}}},
                ["body", "state", "state_details", "scheduled_time"],
                "format",
            ),
        ],
    )
    def test_invalid_fields_are_422_at_their_location(
        self, client: TestClient, fields: dict[str, Any], loc: list[Any], error_type: str
    ) -> None:
        response = create(client, **fields)

        body = assert_validation_error(response, loc, error_type)
        assert body["request_body"] == {"task_key": "my-task", "dynamic_key": "0", **fields}
        assert create(client).status_code == 201  # the refused request stored nothing

    @pytest.mark.parametrize("missing", ["task_key", "dynamic_key"])
    def test_missing_keys_are_422(self, client: TestClient, missing: str) -> None:
        body = {"task_key": "t", "dynamic_key": "d"}
        del body[missing]

        assert_validation_error(client.post(CREATE, json=body), ["body", missing], "missing")

    @pytest.mark.parametrize(
        ("content", "request_body"),
        [
            (b"{not json", "{not json"),
            (b'{"task_key": "t", "dynamic_key": NaN}', '{"task_key": "t", "dynamic_key": NaN}'),
            (b'{"task_key": "t", "dynamic_key": 1e999}', '{"task_key": "t", "dynamic_key": 1e999}'),
            (b'{"task_key": "\\ud800", "dynamic_key": "d"}', None),
            (b"\xff\xfe{}", "\ufffd\ufffd{}"),
        ],
    )
    def test_bodies_that_are_not_json_are_422(
        self, client: TestClient, content: bytes, request_body: Any
    ) -> None:
        response = client.post(
            CREATE, content=content, headers={"content-type": "application/json"}
        )

        body = assert_validation_error(
            response, response.json()["detail"][0]["loc"], "json_invalid"
        )
        assert body["detail"][0]["loc"][0] == "body"
        assert body["request_body"] == request_body

    @pytest.mark.parametrize("content", [b"", b"null"])
    def test_an_empty_body_is_422(self, client: TestClient, content: bytes) -> None:
        response = client.post(
            CREATE, content=content, headers={"content-type": "application/json"}
        )

        assert assert_validation_error(response, ["body"], "missing")["request_body"] is None

    def test_a_body_without_content_type_is_read_as_json(self, client: TestClient) -> None:
        response = client.post(CREATE, content=b'{"task_key": "t", "dynamic_key": "d"}')

        assert response.status_code == 201

    def test_a_chunked_body_is_read(self, client: TestClient) -> None:
        chunks = iter([b'{"task_key": "t", ', b'"dynamic_key": "d"}'])

        response = client.post(CREATE, content=chunks, headers={"content-type": "application/json"})

        assert response.status_code == 201

    def test_a_body_in_its_declared_charset_is_stored_as_it_was_validated(
        self, client: TestClient
    ) -> None:
        body = '{"task_key": "t", "dynamic_key": "d", "name": "caf\u00e9"}'

        response = client.post(
            CREATE,
            content=body.encode("latin-1"),
            headers={"content-type": "application/json;charset=latin-1"},
        )

        assert response.status_code == 201, response.text
        assert read_run(client, response.json()["id"])["name"] == "caf\u00e9"

    @pytest.mark.parametrize(
        "content_type",
        ["Application/JSON", "APPLICATION/JSON; Charset=UTF-8", "application/json ; charset=utf-8"],
    )
    def test_the_media_type_is_read_in_any_case_and_spacing(
        self, client: TestClient, content_type: str
    ) -> None:
        body = b'{"task_key": "t", "dynamic_key": "d", "name": "caf\xc3\xa9"}'

        response = client.post(CREATE, content=body, headers={"content-type": content_type})

        assert response.status_code == 201, response.text
        assert read_run(client, response.json()["id"])["name"] == "caf\u00e9"

    def test_a_byte_order_mark_before_the_body_is_ignored(self, client: TestClient) -> None:
        body = b'\xef\xbb\xbf{"task_key": "t", "dynamic_key": "d"}'

        response = client.post(CREATE, content=body, headers={"content-type": "application/json"})

        assert response.status_code == 201, response.text

    def test_a_byte_order_mark_inside_the_body_is_invalid_json(self, client: TestClient) -> None:
        body = b' \xef\xbb\xbf{"task_key": "t", "dynamic_key": "d"}'

        response = client.post(CREATE, content=body, headers={"content-type": "application/json"})

        assert_validation_error(response, ["body", 1], "json_invalid")

    def test_a_body_in_a_media_type_of_another_case_is_validated(self, client: TestClient) -> None:
        response = client.post(
            CREATE, content=b'{"task_key": "t"}', headers={"content-type": "Application/Json"}
        )

        assert_validation_error(response, ["body", "dynamic_key"], "missing")

    def test_a_body_that_is_not_json_is_415(self, client: TestClient) -> None:
        response = client.post(CREATE, content=b"hi", headers={"content-type": "text/plain"})

        assert response.status_code == 415
        assert response.headers["content-type"] == "application/json"
        assert "text/plain" in response.json()["detail"]

    def test_without_the_trailing_slash_redirects(self, client: TestClient) -> None:
        response = client.post(
            "/api/task_runs", json={"task_key": "t", "dynamic_key": "d"}, follow_redirects=False
        )

        assert response.status_code == 307
        assert response.headers["location"].endswith("/api/task_runs/")

    @pytest.mark.parametrize("levels", [1, 30, 62])
    def test_state_data_nesting_up_to_the_limit_is_stored_and_read_back(
        self, client: TestClient, levels: int
    ) -> None:
        data = nested(levels)

        response = create(client, state={"type": "COMPLETED", "data": data})

        assert response.status_code == 201
        read = client.get(f"{CREATE}{response.json()['id']}")
        assert read.status_code == 200
        assert read.json()["state"]["data"] == data

    @pytest.mark.parametrize(
        "fields",
        [
            {"state": {"type": "COMPLETED", "data": nested(63)}},
            {"state": {"type": "COMPLETED", "data": nested(300)}},
            {"task_inputs": {"x": [{"id": str(uuid.uuid4()), "extra": nested(70)}]}},
            {"labels": {"a": nested(100)}},
            {"empirical_policy": {"retries": 1, "extra": nested(70)}},
        ],
        ids=["data-63", "data-300", "task-inputs", "labels", "empirical-policy"],
    )
    def test_a_body_nesting_deeper_than_64_levels_is_422_and_stores_nothing(
        self, client: TestClient, fields: dict[str, Any]
    ) -> None:
        response = create(client, **fields)

        body = assert_validation_error(response, ["body"], "x-max-depth")
        assert body["detail"] == [
            {
                "loc": ["body"],
                "msg": "The body nests arrays and objects more than 64 levels deep",
                "type": "x-max-depth",
            }
        ]
        assert create(client).status_code == 201  # the refused request stored nothing

    def test_a_body_too_deep_for_the_parser_is_the_same_422(self, client: TestClient) -> None:
        content = b'{"task_key": "t", "dynamic_key": "d", "labels": {"a": '
        content += b"[" * 100_000 + b"]" * 100_000 + b"}}"

        response = client.post(
            CREATE, content=content, headers={"content-type": "application/json"}
        )

        body = assert_validation_error(response, ["body"], "x-max-depth")
        assert body["request_body"] is None

    @pytest.mark.parametrize(
        ("fields", "loc", "error_type"),
        [
            ({"tags": ["t"] * 1001}, ["body", "tags"], "maxItems"),
            ({"labels": {f"k{i}": i for i in range(1001)}}, ["body", "labels"], "maxProperties"),
            (
                {"task_inputs": {f"k{i}": [] for i in range(1001)}},
                ["body", "task_inputs"],
                "maxProperties",
            ),
            (
                {"task_inputs": {"x": [{"input_type": "parameter", "name": "p"}] * 10_001}},
                ["body", "task_inputs", "x"],
                "maxItems",
            ),
        ],
        ids=["tags", "labels", "task-inputs-names", "task-inputs-sources"],
    )
    def test_lists_and_maps_over_their_documented_size_are_422(
        self, client: TestClient, fields: dict[str, Any], loc: list[Any], error_type: str
    ) -> None:
        assert_validation_error(create(client, **fields), loc, error_type)

    def test_lists_and_maps_at_their_documented_size_are_stored(self, client: TestClient) -> None:
        response = create(
            client,
            tags=["t"] * 1000,
            labels={f"k{i}": i for i in range(1000)},
            task_inputs={"x": [{"input_type": "parameter", "name": "p"}] * 10_000},
        )

        assert response.status_code == 201
        assert len(client.get(f"{CREATE}{response.json()['id']}").json()["tags"]) == 1000

    def test_thirty_thousand_wrong_tags_are_one_problem(self, client: TestClient) -> None:
        response = create(client, tags=[1] * 30_000)

        body = assert_validation_error(response, ["body", "tags"], "maxItems")
        assert body["detail"] == [
            {
                "loc": ["body", "tags"],
                "msg": "30000 items, more than the 1000 allowed",
                "type": "maxItems",
            }
        ]

    def test_many_problems_are_listed_fifty_at_most_then_counted(self, client: TestClient) -> None:
        response = create(client, tags=[1] * 900)

        body = assert_validation_error(response, ["body", "tags", 0], "type")
        assert len(body["detail"]) == 51
        assert body["detail"][-1] == {
            "loc": ["body"],
            "msg": "850 more error(s) not listed",
            "type": "too_many_errors",
        }

    def test_a_large_rejected_body_is_not_sent_back(self, client: TestClient) -> None:
        small = create(client, tags=[1], name="x")
        large = create(client, tags=[1], name="x" * 70_000)

        assert assert_validation_error(small, ["body", "tags", 0], "type")["request_body"]
        assert assert_validation_error(large, ["body", "tags", 0], "type")["request_body"] is None

    def test_a_run_whose_answer_cannot_be_built_is_not_stored(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Also on PostgreSQL, where the create's statement commits by itself."""

        def fail(*_: Any, **__: Any) -> None:
            raise RuntimeError("cannot build it")

        monkeypatch.setattr(task_runs, "task_run_model", fail)

        response = create(client, tags=["t"])
        monkeypatch.undo()

        assert response.status_code == 500
        assert client.post("/api/task_runs/count", json={}).json() == 0
        assert create(client, tags=["t"]).status_code == 201

    @pytest.mark.parametrize(
        ("state", "one_statement"),
        [(None, True), ({"type": "SCHEDULED", "state_details": {"deferred": True}}, False)],
    )
    def test_a_create_is_written_as_one_statement_unless_a_background_tasks(
        self,
        client: TestClient,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        state: dict[str, Any] | None,
        one_statement: bool,
    ) -> None:
        asked = record_writes(database, monkeypatch)

        assert create(client, state=state).status_code == 201
        assert asked == [one_statement]


class TestReadTaskRun:
    @pytest.fixture
    def stored(self, database: Database) -> models.TaskRun:
        """A run created through the service, as a test's starting point."""
        with database.transaction() as connection:
            outcome = task_runs.create_task_run(
                connection=connection,
                task_run=models.TaskRunCreate(task_key="stored", dynamic_key="0", tags=["t"]),
            )
        return outcome.task_run

    def test_returns_the_full_run(self, client: TestClient, stored: models.TaskRun) -> None:
        response = client.get(f"{CREATE}{stored.id}")

        assert response.status_code == 200
        expected = stored.model_dump(mode="json")
        assert without_estimates(response.json()) == without_estimates(expected)

    def test_returns_what_create_returned(self, client: TestClient) -> None:
        created = create(client, state={"type": "COMPLETED", "data": {"a": 1}}, tags=["x"]).json()

        read = client.get(f"{CREATE}{created['id']}").json()

        assert without_estimates(read) == without_estimates(created)

    def test_an_upper_case_id_reads_the_run(
        self, client: TestClient, stored: models.TaskRun
    ) -> None:
        response = client.get(f"{CREATE}{str(stored.id).upper()}")

        assert response.status_code == 200
        assert response.json()["id"] == str(stored.id)

    def test_unknown_id_is_404_with_a_json_body(self, client: TestClient) -> None:
        response = client.get(f"{CREATE}{uuid.uuid4()}")

        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "Task run not found"}

    @pytest.mark.parametrize(
        "bad_id",
        [
            "not-a-uuid",
            "123",
            "6b4fcd447f424d079a7c5ac6a1f4c1b2x",
            # A UUID's 32 digits without hyphens, which Prefect's path converter takes.
            "6b4fcd447f424d079a7c5ac6a1f4c1b2",
        ],
    )
    def test_an_id_that_is_not_a_uuid_is_422(self, client: TestClient, bad_id: str) -> None:
        response = client.get(f"{CREATE}{bad_id}")

        body = assert_validation_error(response, ["path", "id"], "format")
        assert body["request_body"] is None

    def test_pending_run_grows_late(self, client: TestClient, stored: models.TaskRun) -> None:
        first = client.get(f"{CREATE}{stored.id}").json()["estimated_start_time_delta"]
        time.sleep(0.05)
        second = client.get(f"{CREATE}{stored.id}").json()["estimated_start_time_delta"]

        assert 0 < first < second

    def test_running_run_estimates_its_run_time(self, client: TestClient) -> None:
        run_id = create(client, state={"type": "RUNNING"}).json()["id"]
        time.sleep(0.05)

        read = client.get(f"{CREATE}{run_id}").json()

        assert read["estimated_run_time"] >= 0.05
        assert read["total_run_time"] == 0.0

    def test_overdue_scheduled_run_is_late_by_its_due_time(self, client: TestClient) -> None:
        due = datetime.now(UTC) - timedelta(hours=1)
        run_id = create(
            client,
            state={"type": "SCHEDULED", "state_details": {"scheduled_time": due.isoformat()}},
        ).json()["id"]

        delta = client.get(f"{CREATE}{run_id}").json()["estimated_start_time_delta"]

        assert 3600 <= delta < 3660


class TestErrors:
    def test_unknown_path_is_404_json(self, client: TestClient) -> None:
        response = client.get("/api/nothing-here")

        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}

    def test_wrong_method_is_405_json(self, client: TestClient) -> None:
        response = client.get(CREATE)

        assert response.status_code == 405
        assert response.json() == {"detail": "Method Not Allowed"}

    @pytest.mark.parametrize("path", ["/api/task_runs/abc%0Adef", "/api/task_runs/abc%0Ddef"])
    def test_a_line_break_in_the_path_is_404(self, client: TestClient, path: str) -> None:
        response = client.get(path)

        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}

    def test_an_unexpected_error_is_500_without_a_traceback(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fail(**_: Any) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(task_run_queries, "read_task_run", fail)

        response = client.get(f"{CREATE}{uuid.uuid4()}")

        assert response.status_code == 500
        assert response.json() == {"detail": "Internal Server Error"}
        assert "secret" not in response.text

    def test_a_failure_is_logged_by_name_and_place_without_its_message(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def fail(**_: Any) -> None:
            raise ValueError("row contents: secret-value") from KeyError("secret-key")

        monkeypatch.setattr(task_run_queries, "read_task_run", fail)

        client.get(f"{CREATE}{uuid.uuid4()}")

        [record] = [r for r in caplog.records if r.name == "app.contract.errors"]
        logged = record.getMessage()
        assert logged.startswith(
            "unhandled error: builtins.ValueError, caused by builtins.KeyError"
        )
        assert "in fail" in logged  # where it was raised
        assert "secret" not in logged
        assert record.exc_info is None


class TestServiceLimits:
    """Answers that do not depend on the database backend."""

    def test_a_body_over_the_limit_is_413(self, tmp_path: Path) -> None:
        app = create_app(
            Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", max_request_body_bytes=100)
        )
        body = LARGE_BODY

        with app.test_client() as client:
            declared = client.post(CREATE, json=body)
            chunked = client.post(
                CREATE,
                content=iter([json.dumps(body).encode()]),
                headers={"content-type": "application/json"},
            )

        for response in (declared, chunked):
            assert response.status_code == 413
            assert response.json() == {"detail": "The request body is larger than 100 bytes."}

    def test_a_body_larger_than_all_a_worker_may_hold_is_413(self, tmp_path: Path) -> None:
        # It could never be read: a 503 would ask for it again, for ever.
        app = create_app(
            Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", max_buffered_body_bytes=100)
        )

        with app.test_client() as client:
            response = client.post(CREATE, json=LARGE_BODY)

        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert response.json() == {"detail": "The request body is larger than 100 bytes."}

    def test_an_answer_before_the_body_is_read_closes_the_connection(
        self, client: TestClient
    ) -> None:
        response = client.post(
            CREATE, json={"task_key": "t"}, headers={"x-prefect-api-version": "0.1.0"}
        )
        without_body = client.get(
            f"{CREATE}{uuid.uuid4()}", headers={"x-prefect-api-version": "0.1.0"}
        )

        assert response.status_code == 400
        assert response.headers["connection"] == "close"
        assert without_body.status_code == 400
        assert "connection" not in without_body.headers

    def test_an_unreachable_database_is_503_with_retry_after(self) -> None:
        app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:9/none"))

        with app.test_client() as client:
            response = client.get(f"{CREATE}{uuid.uuid4()}")

        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "nothing was changed" in response.json()["detail"]


class TestApiVersionHeader:
    @pytest.mark.parametrize("version", ["", "0.8.0", "0.8.4", "0.10.0", "1.0.0", "9.9.9"])
    def test_absent_empty_or_recent_versions_are_accepted(
        self, client: TestClient, version: str
    ) -> None:
        response = client.post(
            CREATE,
            json={"task_key": "t", "dynamic_key": version},
            headers={"x-prefect-api-version": version},
        )

        assert response.status_code == 201

    def test_an_overlong_version_is_400_with_the_value_shortened(self, client: TestClient) -> None:
        version = "0.8." + "1" * 5000

        response = client.get("/api/health", headers={"x-prefect-api-version": version})

        assert response.status_code == 400
        assert response.json() == {
            "detail": "Invalid X-PREFECT-API-VERSION header format."
            f"Expected header in format 'x.y.z' but received {version[:64]}…"
        }

    def test_a_version_of_64_characters_is_read(self, client: TestClient) -> None:
        version = "0.8." + "0" * 59 + "1"

        response = client.get("/api/health", headers={"x-prefect-api-version": version})

        assert len(version) == 64
        assert response.status_code == 200

    @pytest.mark.parametrize("version", ["abc", "0.8", "1.2.3.4", "v0.8.4", "0.8.x", "-1.0.0"])
    def test_a_malformed_version_is_400(self, client: TestClient, version: str) -> None:
        response = client.get(f"{CREATE}{uuid.uuid4()}", headers={"x-prefect-api-version": version})

        assert response.status_code == 400
        assert response.json() == {
            "detail": "Invalid X-PREFECT-API-VERSION header format."
            f"Expected header in format 'x.y.z' but received {version}"
        }

    def test_an_old_version_is_400_before_the_body_is_validated(self, client: TestClient) -> None:
        response = client.post(
            CREATE, json={"bogus": 1}, headers={"x-prefect-api-version": "0.7.9"}
        )

        assert response.status_code == 400
        assert response.json() == {
            "detail": "The request specified API version 0.7.9 but this server requires "
            "version 0.8.0 or higher."
        }


class TestUpdateTaskRun:
    def patch(self, client: TestClient, run_id: str, body: Any) -> Any:
        return client.patch(f"{CREATE}{run_id}", json=body)

    def test_a_rename_is_written_as_one_statement(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = create_run(client, name="before")
        asked = record_writes(database, monkeypatch)

        assert self.patch(client, run["id"], {"name": "after"}).status_code == 204
        assert asked == [True]
        assert read_run(client, run["id"])["name"] == "after"

    def test_renames_the_run_and_answers_204_without_a_body(self, client: TestClient) -> None:
        run = create_run(client, name="before")

        response = self.patch(client, run["id"], {"name": "after"})

        assert response.status_code == 204
        assert response.content == b""
        assert "content-type" not in response.headers
        renamed = read_run(client, run["id"])
        assert renamed["name"] == "after"
        assert renamed["updated"] > run["updated"]
        assert without_estimates(renamed) | {"name": "before", "updated": run["updated"]} == (
            without_estimates(run)
        )

    @pytest.mark.parametrize("name", [None, ""])
    def test_null_or_empty_gives_a_new_random_name(
        self, client: TestClient, name: str | None
    ) -> None:
        run = create_run(client, name="not-random")

        assert self.patch(client, run["id"], {"name": name}).status_code == 204

        new_name = read_run(client, run["id"])["name"]
        assert TWO_WORD_NAME.match(new_name)
        assert new_name != "not-random"

    def test_an_empty_update_only_marks_the_run_updated(self, client: TestClient) -> None:
        run = create_run(client, name="kept")

        assert self.patch(client, run["id"], {}).status_code == 204

        read = read_run(client, run["id"])
        assert read["name"] == "kept"
        assert read["updated"] > run["updated"]

    def test_the_history_is_unchanged(self, client: TestClient) -> None:
        run = create_run(client)
        set_state(client, run["id"], "RUNNING")
        before = states_of(client, run["id"])

        self.patch(client, run["id"], {"name": "renamed"})

        assert states_of(client, run["id"]) == before
        assert read_run(client, run["id"])["state_type"] == "RUNNING"

    def test_an_unknown_run_is_404(self, client: TestClient) -> None:
        response = self.patch(client, str(uuid.uuid4()), {"name": "x"})

        assert response.status_code == 404
        assert response.json() == {"detail": "Task run not found"}

    @pytest.mark.parametrize(
        ("body", "loc", "error_type"),
        [
            ({"name": "x", "tags": ["a"]}, ["body", "tags"], "extra_forbidden"),
            ({"name": 5}, ["body", "name"], "type"),
            ({"name": "a\x00b"}, ["body", "name"], "pattern"),
            ({"name": "n" * 601}, ["body", "name"], "maxLength"),
            (None, ["body"], "missing"),
        ],
    )
    def test_invalid_updates_are_422(
        self, client: TestClient, body: Any, loc: list[Any], error_type: str
    ) -> None:
        run = create_run(client, name="unchanged")

        assert_validation_error(self.patch(client, run["id"], body), loc, error_type)
        assert read_run(client, run["id"])["name"] == "unchanged"

    def test_an_id_that_is_not_a_uuid_is_422(self, client: TestClient) -> None:
        assert_validation_error(self.patch(client, "nope", {"name": "x"}), ["path", "id"], "format")


class TestDeleteTaskRun:
    def test_deletes_the_run_and_its_states(self, client: TestClient) -> None:
        run = create_run(client)
        set_state(client, run["id"], "RUNNING")
        state_ids = [state["id"] for state in states_of(client, run["id"])]

        response = client.delete(f"{CREATE}{run['id']}")

        assert response.status_code == 204
        assert response.content == b""
        assert client.get(f"{CREATE}{run['id']}").status_code == 404
        assert states_of(client, run["id"]) == []
        for state_id in state_ids:
            assert client.get(f"/api/task_run_states/{state_id}").status_code == 404
        assert set_state(client, run["id"], "RUNNING").status_code == 404

    def test_the_cache_entries_of_its_states_go_too(self, client: TestClient) -> None:
        cached = create_run(client, task_key="cached")
        set_state(client, cached["id"], "RUNNING")
        set_state(client, cached["id"], "COMPLETED", state_details={"cache_key": "gone"})
        client.delete(f"{CREATE}{cached['id']}")
        other = create_run(client, task_key="other")

        answer = set_state(client, other["id"], "RUNNING", state_details={"cache_key": "gone"})

        assert (answer.status_code, answer.json()["status"]) == (201, "ACCEPT")
        assert answer.json()["state"]["type"] == "RUNNING"

    def test_other_runs_are_left_alone(self, client: TestClient) -> None:
        deleted, kept = create_run(client, task_key="a"), create_run(client, task_key="b")

        client.delete(f"{CREATE}{deleted['id']}")

        assert without_estimates(read_run(client, kept["id"])) == without_estimates(kept)
        assert len(states_of(client, kept["id"])) == 1

    def test_the_same_key_creates_a_new_run_afterwards(self, client: TestClient) -> None:
        first = create_run(client)
        client.delete(f"{CREATE}{first['id']}")

        again = create(client)

        assert again.status_code == 201
        assert again.json()["id"] != first["id"]

    def test_a_delete_is_written_as_one_statement(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = create_run(client)
        set_state(client, run["id"], "RUNNING")
        asked = record_writes(database, monkeypatch)

        assert client.delete(f"{CREATE}{run['id']}").status_code == 204
        assert asked == [True]
        assert client.get(f"{CREATE}{run['id']}").status_code == 404
        assert states_of(client, run["id"]) == []

    def test_an_unknown_or_already_deleted_run_is_404(self, client: TestClient) -> None:
        run = create_run(client)
        client.delete(f"{CREATE}{run['id']}")

        for run_id in (run["id"], str(uuid.uuid4())):
            response = client.delete(f"{CREATE}{run_id}")
            assert response.status_code == 404
            assert response.json() == {"detail": "Task run not found"}

    def test_an_id_that_is_not_a_uuid_is_422(self, client: TestClient) -> None:
        assert_validation_error(client.delete(f"{CREATE}nope"), ["path", "id"], "format")

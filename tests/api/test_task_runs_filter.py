"""POST /task_runs/filter through HTTP, on every database backend.

Expected orders are computed here from the runs' fields, so the same test passing on SQLite and
PostgreSQL shows that both give the same pages for the same data.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from app.db.database import Database
from app.db.tables import task_run_tag
from tests.support.api import assert_validation_error, parse_time, set_state
from tests.support.queries import (
    FILTER,
    at,
    filter_ids,
    filter_runs,
    ids,
    new_run,
    task_runs,
)
from tests.support.sockets import EVENTS_IN, authenticated, eventually, task_run_event

NO_FLOWS = "This service stores no flow runs"


def newest_first(runs: list[dict[str, Any]]) -> list[str]:
    return sorted(ids(runs), reverse=True)


class TestReadTaskRuns:
    def test_no_body_returns_every_run_newest_id_first(self, client: TestClient) -> None:
        runs = [new_run(client) for _ in range(3)]

        response = client.post(FILTER)

        assert response.status_code == 200
        assert ids(response.json()) == newest_first(runs)
        assert response.json()[0]["task_key"] == runs[2]["task_key"]
        assert response.json()[0]["state"]["id"] == runs[2]["state_id"]

    def test_null_keys_and_unknown_top_level_keys_mean_the_defaults(
        self, client: TestClient
    ) -> None:
        runs = [new_run(client) for _ in range(2)]
        body = {
            "sort": None,
            "limit": None,
            "offset": None,
            "flows": None,
            "flow_runs": None,
            "task_runs": None,
            "deployments": None,
            "not_a_key": 1,
        }

        assert filter_ids(client, body) == newest_first(runs)
        assert filter_ids(client, None) == newest_first(runs)

    def test_returns_full_task_runs(self, client: TestClient) -> None:
        run = new_run(client, tags=["a"], labels={"k": "v"})

        (found,) = filter_runs(client, {})

        assert set(found) == set(run)
        assert {key: found[key] for key in ("id", "dynamic_key", "labels", "tags")} == {
            key: run[key] for key in ("id", "dynamic_key", "labels", "tags")
        }

    # -- criteria ------------------------------------------------------------------------

    def test_id_any(self, client: TestClient) -> None:
        first, second, _third = (new_run(client) for _ in range(3))

        assert filter_ids(client, task_runs(id={"any_": [first["id"], second["id"]]})) == (
            newest_first([first, second])
        )
        assert filter_ids(client, task_runs(id={"any_": []})) == []
        assert filter_ids(client, task_runs(id={"any_": [str(uuid.uuid4())]})) == []
        assert len(filter_ids(client, task_runs(id={"any_": None}))) == 3

    def test_id_any_takes_the_hyphenated_form_in_either_case(self, client: TestClient) -> None:
        run = new_run(client)

        assert filter_ids(client, task_runs(id={"any_": [run["id"].upper()]})) == [run["id"]]

    @pytest.mark.parametrize(
        "written", [lambda u: u.replace("-", ""), lambda u: f"{{{u}}}", lambda u: f"urn:uuid:{u}"]
    )
    def test_id_any_in_another_form_is_422(self, client: TestClient, written: Any) -> None:
        response = client.post(
            FILTER, json=task_runs(id={"any_": [written(new_run(client)["id"])]})
        )

        assert_validation_error(response, ["body", "task_runs", "id", "any_", 0], "format")

    def test_name_any_is_exact(self, client: TestClient) -> None:
        alpha, _ = new_run(client, name="alpha"), new_run(client, name="Alpha")

        assert filter_ids(client, task_runs(name={"any_": ["alpha"]})) == [alpha["id"]]
        assert filter_ids(client, task_runs(name={"any_": ["alp"]})) == []

    def test_name_like_is_a_case_insensitive_substring(self, client: TestClient) -> None:
        runs = [new_run(client, name=name) for name in ("Big-Task", "small-task", "other")]

        assert filter_ids(client, task_runs(name={"like_": "TASK"})) == newest_first(runs[:2])
        assert filter_ids(client, task_runs(name={"like_": "g-t"})) == [runs[0]["id"]]
        assert filter_ids(client, task_runs(name={"like_": "nope"})) == []
        assert len(filter_ids(client, task_runs(name={"like_": ""}))) == 3

    def test_name_like_takes_percent_and_underscore_literally(self, client: TestClient) -> None:
        percent, underscore, plain = (
            new_run(client, name=name) for name in ("100%_done", "a_b", "axb")
        )

        assert filter_ids(client, task_runs(name={"like_": "%"})) == [percent["id"]]
        assert filter_ids(client, task_runs(name={"like_": "a_b"})) == [underscore["id"]]
        assert filter_ids(client, task_runs(name={"like_": "_"})) == newest_first(
            [percent, underscore]
        )
        assert filter_ids(client, task_runs(name={"like_": "\\"})) == []
        assert plain["id"] not in filter_ids(client, task_runs(name={"like_": "a_b"}))

    def test_name_like_folds_ascii_letters_only(self, client: TestClient) -> None:
        accented = new_run(client, name="Éclair-Straße")

        assert filter_ids(client, task_runs(name={"like_": "éCLAIR"})) == []
        assert filter_ids(client, task_runs(name={"like_": "ÉCLAIR"})) == [accented["id"]]
        assert filter_ids(client, task_runs(name={"like_": "strasse"})) == []
        assert filter_ids(client, task_runs(name={"like_": "STRAßE"})) == [accented["id"]]

    def test_name_any_and_like_must_both_hold(self, client: TestClient) -> None:
        run = new_run(client, name="alpha")
        new_run(client, name="beta")

        body = task_runs(name={"any_": ["alpha", "beta"], "like_": "ALP"})
        assert filter_ids(client, body) == [run["id"]]

    def test_tags_all_needs_every_tag(self, client: TestClient) -> None:
        both = new_run(client, tags=["a", "b", "c"])
        one = new_run(client, tags=["a"])
        untagged = new_run(client)

        assert filter_ids(client, task_runs(tags={"all_": ["a", "b"]})) == [both["id"]]
        assert filter_ids(client, task_runs(tags={"all_": ["b", "a", "a"]})) == [both["id"]]
        assert filter_ids(client, task_runs(tags={"all_": ["a"]})) == newest_first([both, one])
        assert filter_ids(client, task_runs(tags={"all_": ["z"]})) == []
        assert filter_ids(client, task_runs(tags={"all_": []})) == newest_first(
            [both, one, untagged]
        )

    def test_tags_is_null(self, client: TestClient) -> None:
        tagged, untagged = new_run(client, tags=["a"]), new_run(client)

        assert filter_ids(client, task_runs(tags={"is_null_": True})) == [untagged["id"]]
        assert filter_ids(client, task_runs(tags={"is_null_": False})) == [tagged["id"]]
        body = task_runs(tags={"operator": "or_", "all_": ["a"], "is_null_": True})
        assert filter_ids(client, body) == newest_first([tagged, untagged])

    def test_tags_all_empty_matches_every_run_under_or_too(self, client: TestClient) -> None:
        tagged, untagged = new_run(client, tags=["a"]), new_run(client)

        body = task_runs(tags={"operator": "or_", "all_": [], "is_null_": False})
        assert filter_ids(client, body) == newest_first([tagged, untagged])

    def test_duplicate_tags_count_once_and_go_with_the_deleted_run(
        self, client: TestClient, database: Database
    ) -> None:
        run = new_run(client, tags=["a", "a", "b"])
        assert filter_ids(client, task_runs(tags={"all_": ["a", "b"]})) == [run["id"]]

        assert client.delete(f"/api/task_runs/{run['id']}").status_code == 204

        assert filter_ids(client, task_runs(tags={"all_": ["a"]})) == []
        with database.snapshot() as connection:
            assert connection.execute(select(task_run_tag)).all() == []

    def test_a_tag_holding_nul_is_a_tag_no_filter_can_name(self, client: TestClient) -> None:
        mixed = new_run(client, tags=["ok", "bad\x00"])
        only_nul = new_run(client, tags=["\x00"])

        assert filter_ids(client, task_runs(tags={"all_": ["ok"]})) == [mixed["id"]]
        assert filter_ids(client, task_runs(tags={"is_null_": False})) == newest_first(
            [mixed, only_nul]
        )
        assert filter_ids(client, task_runs(tags={"is_null_": True})) == []
        response = client.post(FILTER, json=task_runs(tags={"all_": ["\x00"]}))
        assert_validation_error(response, ["body", "task_runs", "tags", "all_", 0], "pattern")

    def test_a_run_recorded_from_events_is_found_by_its_latest_tags(
        self, client: TestClient
    ) -> None:
        run_id = str(uuid.uuid4())
        fields = {"task_key": "evented", "dynamic_key": "0", "tags": ["first"]}
        now = datetime.now(UTC)

        with authenticated(client, EVENTS_IN) as socket:
            socket.send_json(task_run_event(run_id, "PENDING", occurred=now, task_run=fields))
            socket.send_json(
                task_run_event(
                    run_id,
                    "RUNNING",
                    occurred=now + timedelta(seconds=1),
                    task_run=fields | {"tags": ["second", "second"]},
                )
            )
            eventually(lambda: filter_ids(client, task_runs(tags={"all_": ["second"]})) == [run_id])

        assert filter_ids(client, task_runs(tags={"all_": ["first"]})) == []

    @pytest.mark.parametrize("count", [2, 9, 1000])
    def test_tags_all_with_many_tags(self, client: TestClient, count: int) -> None:
        tags = [f"tag-{number}" for number in range(count)]
        every = new_run(client, tags=tags)
        new_run(client, tags=tags[:-1])

        for path in (FILTER, "/api/task_runs/count", "/api/task_runs/paginate"):
            response = client.post(path, json=task_runs(tags={"all_": tags}))
            assert response.status_code == 200, response.text
        assert filter_ids(client, task_runs(tags={"all_": tags})) == [every["id"]]
        assert filter_ids(client, task_runs(tags={"all_": [*tags[1:], "other"]})) == []

    def test_name_like_up_to_10000_characters_of_any_kind(self, client: TestClient) -> None:
        # A name is at most 600 characters; a search may be longer, and then finds nothing.
        run = new_run(client, name="%" * 600)

        for text in ("%" * 10_000, "_" * 10_000, "\U0001d11e" * 10_000):
            response = client.post(FILTER, json=task_runs(name={"like_": text}))
            assert response.status_code == 200, response.text
            assert response.json() == []
        assert filter_ids(client, task_runs(name={"like_": "%" * 600})) == [run["id"]]
        too_long = client.post(FILTER, json=task_runs(name={"like_": "a" * 10_001}))
        assert_validation_error(too_long, ["body", "task_runs", "name", "like_"], "maxLength")

    def test_state_type_and_name(self, client: TestClient) -> None:
        pending = new_run(client)
        completed = new_run(client, state_type="COMPLETED")
        scheduled = new_run(client, scheduled_minutes=0)

        types = task_runs(state={"type": {"any_": ["COMPLETED", "SCHEDULED"]}})
        assert filter_ids(client, types) == newest_first([completed, scheduled])
        assert filter_ids(client, task_runs(state={"type": {"any_": []}})) == []
        names = task_runs(state={"name": {"any_": ["Pending"]}})
        assert filter_ids(client, names) == [pending["id"]]
        both = task_runs(
            state={
                "operator": "or_",
                "type": {"any_": ["COMPLETED"]},
                "name": {"any_": ["Scheduled"]},
            }
        )
        assert filter_ids(client, both) == newest_first([completed, scheduled])

    def test_start_and_end_time(self, client: TestClient) -> None:
        pending = new_run(client)
        completed = new_run(client, state_type="COMPLETED")
        started = completed["start_time"]

        for field in ("start_time", "end_time"):
            assert filter_ids(client, task_runs(**{field: {"is_null_": True}})) == [pending["id"]]
            assert filter_ids(client, task_runs(**{field: {"is_null_": False}})) == [
                completed["id"]
            ]
            assert filter_ids(client, task_runs(**{field: {"after_": started}})) == [
                completed["id"]
            ]
            assert filter_ids(client, task_runs(**{field: {"before_": started}})) == [
                completed["id"]
            ]
            assert filter_ids(client, task_runs(**{field: {"before_": at(0)}})) == []

    def test_expected_start_time_bounds_are_inclusive(self, client: TestClient) -> None:
        early, middle, late = (new_run(client, scheduled_minutes=m) for m in (0, 10, 20))

        body = task_runs(expected_start_time={"after_": at(10), "before_": at(20)})
        assert filter_ids(client, body) == newest_first([middle, late])
        offset = "2026-01-01T01:10:00+01:00"  # at(10), written in another zone
        assert filter_ids(client, task_runs(expected_start_time={"before_": offset})) == (
            newest_first([early, middle])
        )

    def test_subflow_runs(self, client: TestClient) -> None:
        run = new_run(client)

        assert filter_ids(client, task_runs(subflow_runs={"exists_": True})) == []
        assert filter_ids(client, task_runs(subflow_runs={"exists_": False})) == [run["id"]]
        assert filter_ids(client, task_runs(subflow_runs={"exists_": None})) == [run["id"]]

    def test_flow_run_id(self, client: TestClient) -> None:
        flow_run_a, flow_run_b = str(uuid.uuid4()), str(uuid.uuid4())
        in_a = new_run(client, flow_run_id=flow_run_a)
        in_b = new_run(client, flow_run_id=flow_run_b)
        alone = new_run(client)

        assert filter_ids(client, task_runs(flow_run_id={"any_": [flow_run_a]})) == [in_a["id"]]
        assert filter_ids(client, task_runs(flow_run_id={})) == newest_first([in_a, in_b])
        assert filter_ids(client, task_runs(flow_run_id={"is_null_": True})) == [alone["id"]]
        body = task_runs(flow_run_id={"is_null_": True, "any_": [flow_run_a]})
        assert filter_ids(client, body) == [alone["id"]]
        assert filter_ids(client, task_runs(flow_run_id={"is_null_": None})) == newest_first(
            [in_a, in_b, alone]
        )
        assert filter_ids(client, task_runs(flow_run_id={"any_": []})) == []

    # -- operators and flow-level filters --------------------------------------------------

    def test_criteria_combine_with_and_by_default_and_or_on_request(
        self, client: TestClient
    ) -> None:
        tagged = new_run(client, name="one", tags=["t"])
        named = new_run(client, name="two")
        new_run(client, name="three")

        criteria = {"name": {"any_": ["two"]}, "tags": {"all_": ["t"]}}
        assert filter_ids(client, task_runs(**criteria)) == []
        assert filter_ids(client, task_runs(operator="or_", **criteria)) == newest_first(
            [tagged, named]
        )

    def test_an_empty_criterion_matches_every_run_even_under_or(self, client: TestClient) -> None:
        runs = [new_run(client, name="one"), new_run(client, name="two")]

        body = task_runs(operator="or_", name={}, id={"any_": []})
        assert filter_ids(client, body) == newest_first(runs)

    def test_flow_level_filters_keep_runs_that_have_a_flow_run(self, client: TestClient) -> None:
        flow_run = str(uuid.uuid4())
        in_flow_run = new_run(client, flow_run_id=flow_run)
        in_other = new_run(client, flow_run_id=str(uuid.uuid4()))
        new_run(client)

        assert filter_ids(client, {"flow_runs": {}}) == newest_first([in_flow_run, in_other])
        assert filter_ids(client, {"flows": {}}) == newest_first([in_flow_run, in_other])
        # What Prefect's client sends for `FlowFilter()`: every criterion, null.
        unset = {"operator": "and_", "id": None, "deployment": None, "name": None, "tags": None}
        assert filter_ids(client, {"flows": unset}) == newest_first([in_flow_run, in_other])
        body = {"flow_runs": {"id": {"any_": [flow_run]}}}
        assert filter_ids(client, body) == [in_flow_run["id"]]
        assert filter_ids(client, {"flow_runs": {"id": {"any_": []}}}) == []
        combined = {"flow_runs": {}, "task_runs": {"flow_run_id": {"is_null_": True}}}
        assert filter_ids(client, combined) == []

    @pytest.mark.parametrize(
        ("body", "loc", "words"),
        [
            ({"flow_runs": {"name": {"any_": ["x"]}}}, ["flow_runs", "name"], NO_FLOWS),
            ({"flow_runs": {"id": {"not_any_": []}}}, ["flow_runs", "id", "not_any_"], NO_FLOWS),
            ({"flows": {"name": {"any_": ["x"]}}}, ["flows", "name"], "stores no flows"),
            ({"flows": {"deployment": {}}}, ["flows", "deployment"], "stores no flows"),
            ({"flows": {"version": None}}, ["flows", "version"], "stores no flows"),
            ({"deployments": {}}, ["deployments"], "stores no deployments"),
        ],
    )
    def test_criteria_on_flows_flow_runs_or_deployments_are_refused(
        self, client: TestClient, body: dict[str, Any], loc: list[str], words: str
    ) -> None:
        response = client.post(FILTER, json=body)

        assert response.status_code == 422
        (item,) = response.json()["detail"]
        assert item["loc"] == ["body", *loc]
        assert words in item["msg"]

    @pytest.mark.parametrize(
        "inner",
        [
            {"nope": 1},
            {"name": {"nope": 1}},
            {"tags": {"any_": ["a"]}},
            {"state": {"type": {"all_": []}}},
            {"flow_run_id": {"not_any_": []}},
            {"start_time": {"on_": "2026-01-01T00:00:00Z"}},
        ],
    )
    def test_unknown_keys_inside_a_filter_are_422(
        self, client: TestClient, inner: dict[str, Any]
    ) -> None:
        response = client.post(FILTER, json={"task_runs": inner})

        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "extra_forbidden"

    def test_a_state_type_outside_the_enum_is_422(self, client: TestClient) -> None:
        response = client.post(FILTER, json=task_runs(state={"type": {"any_": ["pending"]}}))

        assert_validation_error(response, ["body", "task_runs", "state", "type", "any_", 0], "enum")

    # -- limit and offset ----------------------------------------------------------------

    def test_limit_and_offset_page_through_without_gaps_or_repeats(
        self, client: TestClient
    ) -> None:
        runs = [new_run(client, name="same") for _ in range(7)]
        body: dict[str, Any] = {"sort": "NAME_ASC", "limit": 3}

        pages = [filter_ids(client, body | {"offset": offset}) for offset in (0, 3, 6, 9)]

        assert [len(page) for page in pages] == [3, 3, 1, 0]
        assert [run_id for page in pages for run_id in page] == sorted(ids(runs))
        assert filter_ids(client, {"limit": 0}) == []
        assert filter_ids(client, {"offset": 10**15}) == []

    def test_limit_200_is_the_default_and_the_maximum(self, client: TestClient) -> None:
        too_many = client.post(FILTER, json={"limit": 201})
        negative = client.post(FILTER, json={"limit": -1})

        body = assert_validation_error(too_many, ["body", "limit"], "maximum")
        assert body["detail"][0]["msg"] == "Invalid limit: must be less than or equal to 200."
        body = assert_validation_error(negative, ["body", "limit"], "minimum")
        assert body["detail"][0]["msg"] == "Invalid limit: must be greater than or equal to 0."
        assert client.post(FILTER, json={"limit": 200}).status_code == 200

    @pytest.mark.parametrize(
        ("body", "loc", "kind"),
        [
            ({"offset": -1}, ["body", "offset"], "minimum"),
            ({"offset": 10**15 + 1}, ["body", "offset"], "maximum"),
            ({"limit": 1.5}, ["body", "limit"], "type"),
            ({"limit": "5"}, ["body", "limit"], "type"),
            ({"sort": "NAME"}, ["body", "sort"], "enum"),
        ],
    )
    def test_bad_bounds_and_sorts_are_422(
        self, client: TestClient, body: dict[str, Any], loc: list[str], kind: str
    ) -> None:
        assert_validation_error(client.post(FILTER, json=body), loc, kind)

    def test_a_default_limit_of_200(self, client: TestClient) -> None:
        for key in range(201):
            response = client.post(
                "/api/task_runs/", json={"task_key": "many", "dynamic_key": str(key)}
            )
            assert response.status_code == 201

        assert len(filter_runs(client, {})) == 200
        assert len(filter_runs(client, {"offset": 200})) == 1


class TestSorts:
    @pytest.fixture
    def runs(self, client: TestClient) -> list[dict[str, Any]]:
        """Runs with ties and NULLs in every sorted field."""
        made = [
            new_run(client, name="b", scheduled_minutes=10),
            new_run(client, name="a", scheduled_minutes=10),
            new_run(client, name="B", scheduled_minutes=5),
            new_run(client, name="b", state_type="COMPLETED"),
            new_run(client, name="é", state_type="COMPLETED"),
            new_run(client, name="z"),
        ]
        # A run that ran: its end time and duration are its own.
        set_state(client, made[5]["id"], "RUNNING")
        set_state(client, made[5]["id"], "COMPLETED")
        return [
            filter_runs(client, {"task_runs": {"id": {"any_": [run["id"]]}}})[0] for run in made
        ]

    @staticmethod
    def expected(runs: list[dict[str, Any]], field: str, *, descending: bool) -> list[str]:
        """The order the contract promises: the field, NULLs last, then the id; one direction."""
        with_value = [run for run in runs if run[field] is not None]
        without = [run for run in runs if run[field] is None]

        def key(run: dict[str, Any]) -> tuple[Any, str]:
            value = run[field]
            return (parse_time(value) if field.endswith("time") else value, run["id"])

        ordered = sorted(with_value, key=key, reverse=descending)
        return ids(ordered) + sorted(ids(without), reverse=descending)

    @pytest.mark.parametrize(
        ("sort", "field", "descending"),
        [
            ("EXPECTED_START_TIME_ASC", "expected_start_time", False),
            ("EXPECTED_START_TIME_DESC", "expected_start_time", True),
            ("NAME_ASC", "name", False),
            ("NAME_DESC", "name", True),
            ("NEXT_SCHEDULED_START_TIME_ASC", "next_scheduled_start_time", False),
            ("END_TIME_DESC", "end_time", True),
            ("ID_DESC", "id", True),
        ],
    )
    def test_each_sort_breaks_ties_by_id_and_puts_nulls_last(
        self,
        client: TestClient,
        runs: list[dict[str, Any]],
        sort: str,
        field: str,
        descending: bool,
    ) -> None:
        found = filter_ids(client, {"sort": sort})

        assert found == self.expected(runs, field, descending=descending)
        pages = [filter_ids(client, {"sort": sort, "limit": 2, "offset": n}) for n in (0, 2, 4)]
        assert [run_id for page in pages for run_id in page] == found

    @pytest.mark.usefixtures("runs")
    def test_names_compare_by_code_point(self, client: TestClient) -> None:
        names = [run["name"] for run in filter_runs(client, {"sort": "NAME_ASC"})]

        assert names == ["B", "a", "b", "b", "z", "é"]

    def test_duration_sorts_by_run_time_then_newest_expected_start(
        self, client: TestClient, runs: list[dict[str, Any]]
    ) -> None:
        ran = runs[5]["id"]
        descending = filter_ids(client, {"sort": "DURATION_DESC"})
        ascending = filter_ids(client, {"sort": "DURATION_ASC"})

        assert descending[0] == ran
        assert ascending[-1] == ran
        # The others ran for 0 s: newest expected start first, then the id (the sort's way).
        rest = [run for run in runs if run["id"] != ran]
        newest_start_first = sorted(rest, key=lambda run: run["id"])
        newest_start_first.sort(
            key=lambda run: parse_time(run["expected_start_time"]), reverse=True
        )
        assert ascending[:-1] == ids(newest_start_first)

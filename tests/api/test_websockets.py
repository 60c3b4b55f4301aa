"""The websocket channels of asyncapi.yaml, through a Starlette TestClient, on every backend:
the handshake, the delivery of background tasks, events in and out.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from connexion import FlaskApp
from sqlalchemy import select
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.contract.asyncapi import frame_validator
from app.db.database import Database, DatabaseUnavailable
from app.db.migrate import upgrade
from app.db.tables import event, task_run_delivery
from app.handlers import events as events_handlers
from app.handlers import task_run_subscriptions as subscription_handlers
from app.main import create_app, database_of
from app.services import deliveries as deliveries_service
from app.services import events as events_service
from app.settings import Settings
from tests.support.api import read_run, set_state, states_of, wide_text, without_estimates
from tests.support.databases import empty_database
from tests.support.sockets import (
    EVENTS_IN,
    EVENTS_OUT,
    SUBSCRIPTION,
    authenticated,
    closed,
    deferred_run,
    eventually,
    send_events,
    subscribed,
    task_run_event,
)

CHANNELS = [SUBSCRIPTION, EVENTS_IN, EVENTS_OUT]
CREDENTIALS = "admin:secret"


def deliveries(database: Database) -> dict[str, dict[str, Any]]:
    """The queue, by run id: whether each run is claimed and a retry."""
    with database.snapshot() as connection:
        rows = connection.execute(select(task_run_delivery)).mappings()
        return {
            str(row["task_run_id"]): {"claimed": row["claim_id"] is not None, "retry": row["retry"]}
            for row in rows
        }


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def scheduled_again_after_a_failure(client: TestClient, run_id: str) -> None:
    """Move a background run through RUNNING to SCHEDULED "AwaitingRetry", as a retry does."""
    set_state(client, run_id, "RUNNING", state_details={"deferred": True})
    set_state(client, run_id, "SCHEDULED", name="AwaitingRetry", state_details={"deferred": True})


def slow_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make each claim of a run take a while, as it does when writers queue: frames the
    worker sends meanwhile arrive before the run is out.
    """
    claim = deliveries_service.claim_next_delivery

    def slow_claim(**arguments: Any) -> Any:
        time.sleep(0.3)
        return claim(**arguments)

    monkeypatch.setattr(deliveries_service, "claim_next_delivery", slow_claim)


def stored_event_ids(database: Database) -> list[str]:
    """The ids of the stored events, but those `send_events` adds to wait."""
    with database.snapshot() as connection:
        query = select(event.c.id).where(event.c.event != "test.marker")
        return [str(i) for i in connection.scalars(query)]


@pytest.fixture
def server_time_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's local time nine hours ahead of UTC, for as long as the test runs."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def app_with_auth(tmp_path: Path) -> Iterator[FlaskApp]:
    """The service requiring credentials, over a database of its own."""
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)
    application = create_app(Settings(database_url=url, api_auth_string=CREDENTIALS))
    yield application
    database_of(application).dispose()


# Short enough for a test to outlive; the events of a test must not be that old yet when the
# test reads them.
BRIEF_RETENTION_SECONDS = 2.0


@pytest.fixture
def app_keeping_events_briefly(backend: str, tmp_path: Path) -> Iterator[FlaskApp]:
    """The service keeping events BRIEF_RETENTION_SECONDS, over a database of its own."""
    with empty_database(backend, tmp_path) as url:
        upgrade(url)
        settings = Settings(database_url=url, event_retention_seconds=BRIEF_RETENTION_SECONDS)
        application = create_app(settings)
        yield application
        database_of(application).dispose()


class TestHandshake:
    @pytest.mark.parametrize("path", CHANNELS)
    def test_auth_then_auth_success(self, client: TestClient, path: str) -> None:
        with client.websocket_connect(path, subprotocols=["prefect"]) as socket:
            assert socket.accepted_subprotocol == "prefect"
            socket.send_json({"type": "auth", "token": "anything without credentials"})
            assert socket.receive_json() == {"type": "auth_success"}

    @pytest.mark.parametrize("path", CHANNELS)
    @pytest.mark.parametrize("first", [{"type": "subscribe"}, "not json", ["auth"]])
    def test_a_first_frame_other_than_auth_is_refused(
        self, client: TestClient, path: str, first: Any
    ) -> None:
        with client.websocket_connect(path, subprotocols=["prefect"]) as socket:
            if isinstance(first, str):
                socket.send_text(first)
            else:
                socket.send_json(first)
            assert closed(socket) == (1008, "Expected 'auth' message")

    @pytest.mark.parametrize("path", CHANNELS)
    @pytest.mark.parametrize(
        ("token", "reason"),
        [(None, "Auth required but no token provided"), ("admin:wrong", "Invalid token")],
    )
    def test_credentials_are_required_when_configured(
        self, app_with_auth: FlaskApp, path: str, token: str | None, reason: str
    ) -> None:
        with (
            app_with_auth.test_client() as client,
            client.websocket_connect(path, subprotocols=["prefect"]) as socket,
        ):
            socket.send_json({"type": "auth", "token": token})
            assert closed(socket) == (1008, reason)

    @pytest.mark.parametrize("path", CHANNELS)
    def test_the_right_credentials_pass(self, app_with_auth: FlaskApp, path: str) -> None:
        with app_with_auth.test_client() as client, authenticated(client, path, token=CREDENTIALS):
            pass

    def test_without_the_subprotocol_there_is_no_exchange(self, client: TestClient) -> None:
        run = deferred_run(client)

        with client.websocket_connect(SUBSCRIPTION) as socket:
            socket.send_json({"type": "subscribe", "keys": ["add-1"], "client_id": "legacy"})
            assert socket.receive_json()["id"] == run["id"]

    def test_without_the_subprotocol_credentials_cannot_be_given(
        self, app_with_auth: FlaskApp
    ) -> None:
        # Accepted, then closed: a close before accepting would be a plain HTTP 403.
        with (
            app_with_auth.test_client() as client,
            client.websocket_connect(SUBSCRIPTION) as socket,
        ):
            assert closed(socket) == (
                1002,
                "'prefect' subprotocol required when auth is configured",
            )

    @pytest.mark.parametrize("path", CHANNELS)
    def test_a_client_that_never_authenticates_is_closed_after_the_timeout(
        self, tmp_path: Path, path: str
    ) -> None:
        url = f"sqlite:///{tmp_path / 'auth.db'}"
        upgrade(url)
        application = create_app(
            Settings(database_url=url, api_auth_string=CREDENTIALS, request_header_timeout=0.5)
        )
        try:
            with (
                application.test_client() as client,
                client.websocket_connect(path, subprotocols=["prefect"]) as socket,
            ):
                assert closed(socket) == (1008, "No 'auth' message within 0.5 s")
        finally:
            database_of(application).dispose()

    def test_an_unknown_channel_is_refused(self, client: TestClient) -> None:
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/events/sideways"):
            pass


class TestScheduledTaskRuns:
    def test_a_background_run_is_delivered_whole(self, client: TestClient) -> None:
        run = deferred_run(client)

        with subscribed(client, "add-1") as socket:
            delivered = socket.receive_json()
            socket.send_json({"type": "ack"})

        assert frame_validator().errors("scheduled_task_run", delivered) == []
        assert without_estimates(delivered) == without_estimates(read_run(client, run["id"]))
        assert delivered["state"]["state_details"]["deferred"] is True

    def test_one_run_at_a_time_the_next_after_the_ack(
        self, client: TestClient, database: Database
    ) -> None:
        first, second = deferred_run(client), deferred_run(client)

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == first["id"]
            queue = deliveries(database)
            socket.send_json({"type": "ack"})
            assert socket.receive_json()["id"] == second["id"]
            socket.send_json({"type": "ack"})
            eventually(lambda: deliveries(database) == {})

        assert queue == {
            first["id"]: {"claimed": True, "retry": False},
            second["id"]: {"claimed": False, "retry": False},
        }
        assert deliveries(database) == {}

    def test_only_the_subscribed_task_keys(self, client: TestClient, database: Database) -> None:
        other = deferred_run(client, "other-1")
        mine = deferred_run(client, "mine-1")

        with subscribed(client, "mine-1", "third-1") as socket:
            assert socket.receive_json()["id"] == mine["id"]
            socket.send_json({"type": "ack"})
            eventually(lambda: mine["id"] not in deliveries(database))

        assert deliveries(database) == {other["id"]: {"claimed": False, "retry": False}}

    @pytest.mark.parametrize("count", [2, 600, 9_999])
    def test_a_worker_of_many_task_keys_gets_its_runs_in_order(
        self, client: TestClient, count: int
    ) -> None:
        keys = [f"task-{number}" for number in range(count)]
        oldest = deferred_run(client, keys[-1])
        newest = deferred_run(client, keys[0])

        delivered = []
        with subscribed(client, "nul\x00key", *keys) as socket:
            for _ in range(2):
                delivered.append(socket.receive_json()["id"])
                socket.send_json({"type": "ack"})

        assert delivered == [oldest["id"], newest["id"]]

    def test_the_subscription_log_line_stays_short_whatever_the_frame_holds(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="app.handlers.task_run_subscriptions")
        huge = "k" * 200_000
        frame = {"type": "subscribe", "keys": [huge] * 12, "client_id": "w" * 200_000}

        with authenticated(client, SUBSCRIPTION) as socket:
            socket.send_json(frame)
            eventually(lambda: bool(caplog.records))

        [line] = [record.getMessage() for record in caplog.records]
        assert len(line) < 2_000
        assert "(200000 characters)" in line
        assert line.endswith("'... 2 more']")

    def test_runs_that_are_not_background_tasks_are_not_delivered(
        self, client: TestClient, database: Database
    ) -> None:
        client.post("/api/task_runs/", json={"task_key": "add-1", "dynamic_key": "plain"})
        client.post(
            "/api/task_runs/",
            json={"task_key": "add-1", "dynamic_key": "due", "state": {"type": "SCHEDULED"}},
        )

        assert deliveries(database) == {}

    def test_a_retry_goes_first(self, client: TestClient) -> None:
        waiting = deferred_run(client)
        retried = deferred_run(client)
        scheduled_again_after_a_failure(client, retried["id"])

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == retried["id"]
            socket.send_json({"type": "ack"})
            assert socket.receive_json()["id"] == waiting["id"]
            socket.send_json({"type": "ack"})

    def test_retries_then_the_oldest_whichever_key_they_have(self, client: TestClient) -> None:
        oldest = deferred_run(client, "add-1")
        newer = deferred_run(client, "mul-1")
        newest = deferred_run(client, "add-1")
        retried = deferred_run(client, "mul-1")
        scheduled_again_after_a_failure(client, retried["id"])

        delivered = []
        with subscribed(client, "mul-1", "add-1") as socket:
            for _ in range(4):
                delivered.append(socket.receive_json()["id"])
                socket.send_json({"type": "ack"})

        assert delivered == [retried["id"], oldest["id"], newer["id"], newest["id"]]

    def test_set_state_to_a_deferred_scheduled_state_queues_the_run(
        self, client: TestClient
    ) -> None:
        run = client.post("/api/task_runs/", json={"task_key": "add-1", "dynamic_key": "x"}).json()

        set_state(client, run["id"], "SCHEDULED", state_details={"deferred": True})

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            socket.send_json({"type": "ack"})

    def test_a_run_whose_worker_left_before_the_ack_is_delivered_again(
        self, client: TestClient, database: Database
    ) -> None:
        run = deferred_run(client)
        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]

        eventually(lambda: deliveries(database) == {run["id"]: {"claimed": False, "retry": True}})
        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            socket.send_json({"type": "ack"})

    def test_an_answer_other_than_ack_closes_and_the_run_is_delivered_again(
        self, client: TestClient, database: Database
    ) -> None:
        run = deferred_run(client)
        with subscribed(client, "add-1") as socket:
            socket.receive_json()
            socket.send_json({"type": "nack"})
            assert closed(socket) == (4001, "Protocol violation: expected 'ack' message")
            eventually(lambda: not deliveries(database)[run["id"]]["claimed"])

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            socket.send_json({"type": "ack"})

    def test_an_ack_after_the_run_left_the_queue_is_logged_as_a_lost_claim(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.handlers.task_run_subscriptions")
        run = deferred_run(client)
        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            assert client.delete(f"/api/task_runs/{run['id']}").status_code == 204
            socket.send_json({"type": "ack"})
            eventually(lambda: bool(caplog.records))

        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(f"the delivery of task run {run['id']} is no longer")

    def test_a_claim_lost_while_the_worker_thinks_is_logged_once(
        self,
        client: TestClient,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.handlers.task_run_subscriptions")
        monkeypatch.setattr(subscription_handlers, "RENEW_SECONDS", 0.05)
        run = deferred_run(client)
        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            assert client.delete(f"/api/task_runs/{run['id']}").status_code == 204
            time.sleep(0.5)  # ten renewals' time
            socket.send_json({"type": "ack"})
            eventually(lambda: bool(caplog.records))
            time.sleep(0.1)

        assert len(caplog.records) == 1

    def test_a_frame_sent_before_a_run_is_out_answers_nothing(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = deferred_run(client)
        slow_claims(monkeypatch)

        with subscribed(client, "add-1") as socket:
            # Sent while the service is still claiming the run.
            socket.send_json({"type": "hello"})
            assert socket.receive_json()["id"] == run["id"]
            socket.send_json({"type": "ack"})
            eventually(lambda: deliveries(database) == {})

    def test_a_second_ack_does_not_acknowledge_the_next_run(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = deferred_run(client)

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == first["id"]
            slow_claims(monkeypatch)
            socket.send_json({"type": "ack"})
            socket.send_json({"type": "ack"})
            second = deferred_run(client)
            assert socket.receive_json()["id"] == second["id"]
            # The worker leaves without acknowledging it: the run is delivered again.

        eventually(
            lambda: deliveries(database) == {second["id"]: {"claimed": False, "retry": True}}
        )

    def test_quit_drops_the_run_and_closes_normally(
        self, client: TestClient, database: Database
    ) -> None:
        run = deferred_run(client)

        with subscribed(client, "add-1") as socket:
            socket.receive_json()
            socket.send_json({"type": "quit"})
            assert closed(socket) == (1000, "")
            eventually(lambda: deliveries(database) == {})
        assert read_run(client, run["id"])["state_type"] == "SCHEDULED"

    def test_a_deleted_run_leaves_the_queue(self, client: TestClient, database: Database) -> None:
        run = deferred_run(client)

        client.delete(f"/api/task_runs/{run['id']}")

        assert deliveries(database) == {}

    def test_a_run_that_moved_on_is_not_delivered(
        self, client: TestClient, database: Database
    ) -> None:
        moved, waiting = deferred_run(client), deferred_run(client)
        set_state(client, moved["id"], "RUNNING", force=True)

        with subscribed(client, "add-1") as socket:
            assert socket.receive_json()["id"] == waiting["id"]
            socket.send_json({"type": "ack"})
            eventually(lambda: deliveries(database) == {})

    def test_the_queue_outlives_the_service(self, database_url: str, client: TestClient) -> None:
        run = deferred_run(client)
        restarted = create_app(Settings(database_url=database_url))
        try:
            with restarted.test_client() as fresh, subscribed(fresh, "add-1") as socket:
                assert socket.receive_json()["id"] == run["id"]
                socket.send_json({"type": "ack"})
                eventually(lambda: deliveries(database_of(restarted)) == {})
        finally:
            database_of(restarted).dispose()

    @pytest.mark.parametrize(
        ("subscribe", "reason"),
        [
            ({"type": "listen", "keys": ["a"], "client_id": "w"}, "expected 'subscribe' message"),
            ({"type": "subscribe", "client_id": "w"}, "expected 'keys' in subscribe message"),
            (
                {"type": "subscribe", "keys": [], "client_id": "w"},
                "expected 'keys' in subscribe message",
            ),
            ({"type": "subscribe", "keys": ["a"]}, "expected 'client_id' in subscribe message"),
            ({"type": "subscribe", "keys": [1], "client_id": "w"}, "invalid 'subscribe' message"),
            (
                {"type": "subscribe", "keys": [f"k{n}" for n in range(10_001)], "client_id": "w"},
                "invalid 'subscribe' message",
            ),
        ],
    )  # fmt: skip
    def test_a_bad_subscription_is_closed_with_4001(
        self, client: TestClient, subscribe: dict[str, Any], reason: str
    ) -> None:
        with authenticated(client, SUBSCRIPTION) as socket:
            socket.send_json(subscribe)
            code, said = closed(socket)

        assert code == 4001
        assert said.startswith(f"Protocol violation: {reason}")


class TestEventsIn:
    def test_a_task_run_event_records_a_new_run_and_its_state(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        fields = {
            "name": "inc-329",
            "task_key": "inc-d77817ed",
            "dynamic_key": "32915063",
            "tags": ["t"],
            "run_count": 1,
            "start_time": "2026-11-30T06:47:59.409977Z",
            "empirical_policy": {"retries": 2, "retry_delay": 1},
        }
        running = task_run_event(run_id, "RUNNING", task_run=fields, message="go")

        send_events(client, running)

        run = read_run(client, run_id)
        assert (run["name"], run["task_key"], run["dynamic_key"]) == (
            "inc-329",
            "inc-d77817ed",
            "32915063",
        )
        assert (run["state_type"], run["state_name"], run["run_count"]) == ("RUNNING", "Running", 1)
        assert run["state_id"] == running["id"]
        assert run["state"]["timestamp"] == running["occurred"].replace("+00:00", "Z")
        assert run["state"]["message"] == "go"
        assert run["tags"] == ["t"]
        assert run["empirical_policy"]["retries"] == 2
        assert run["start_time"] == "2026-11-30T06:47:59.409977Z"
        assert run["flow_run_id"] is None

    def test_a_whole_life_in_order(self, client: TestClient) -> None:
        run = deferred_run(client)
        start = datetime.now(UTC)
        life = [
            task_run_event(run["id"], "PENDING", occurred=start),
            task_run_event(run["id"], "RUNNING", occurred=start + timedelta(seconds=1)),
            task_run_event(
                run["id"],
                "COMPLETED",
                occurred=start + timedelta(seconds=2),
                data={"storage_key": "k"},
            ),
        ]

        send_events(client, *life)

        assert [s["name"] for s in states_of(client, run["id"])] == [
            "Scheduled", "Pending", "Running", "Completed",
        ]  # fmt: skip
        read = read_run(client, run["id"])
        assert read["state"]["data"] == {"storage_key": "k"}
        assert read["state"]["state_details"]["task_run_id"] == run["id"]

    def test_an_older_event_joins_the_history_without_moving_the_run_back(
        self, client: TestClient
    ) -> None:
        run = deferred_run(client)
        now = datetime.now(UTC)
        completed = task_run_event(run["id"], "COMPLETED", occurred=now + timedelta(seconds=2))
        running = task_run_event(run["id"], "RUNNING", occurred=now + timedelta(seconds=1))

        send_events(client, completed, running)

        assert read_run(client, run["id"])["state_type"] == "COMPLETED"
        assert [s["type"] for s in states_of(client, run["id"])] == [
            "SCHEDULED", "RUNNING", "COMPLETED",
        ]  # fmt: skip

    def test_a_newer_event_brings_the_keys_it_reports(self, client: TestClient) -> None:
        run = deferred_run(client, "add-1")
        keys = {"task_key": "add-2", "dynamic_key": "add-2-later"}

        send_events(client, task_run_event(run["id"], "PENDING", task_run=keys))

        read = read_run(client, run["id"])
        assert (read["task_key"], read["dynamic_key"]) == ("add-2", "add-2-later")

    def test_an_older_event_leaves_the_keys_as_they_are(self, client: TestClient) -> None:
        run = deferred_run(client, "add-1")
        now = datetime.now(UTC)
        running = task_run_event(run["id"], "RUNNING", occurred=now + timedelta(seconds=2))
        older = task_run_event(
            run["id"],
            "PENDING",
            occurred=now + timedelta(seconds=1),
            task_run={"task_key": "add-2", "dynamic_key": "add-2-older"},
        )

        send_events(client, running, older)

        read = read_run(client, run["id"])
        assert (read["task_key"], read["dynamic_key"]) == ("add-1", run["dynamic_key"])

    def test_keys_another_run_has_are_not_taken_and_the_state_still_is(
        self, client: TestClient
    ) -> None:
        run, other = deferred_run(client, "add-1"), deferred_run(client, "add-1")
        taken = {"task_key": "add-1", "dynamic_key": other["dynamic_key"]}

        send_events(client, task_run_event(run["id"], "PENDING", task_run=taken))

        read = read_run(client, run["id"])
        assert (read["dynamic_key"], read["state_type"]) == (run["dynamic_key"], "PENDING")
        assert read_run(client, other["id"])["dynamic_key"] == other["dynamic_key"]

    def test_a_run_in_a_flow_run_is_found_by_its_key(self, client: TestClient) -> None:
        flow_run_id = str(uuid.uuid4())
        created = client.post(
            "/api/task_runs/",
            json={"task_key": "k", "dynamic_key": "d", "flow_run_id": flow_run_id},
        ).json()
        other_id = str(uuid.uuid4())
        running = task_run_event(
            other_id,
            "RUNNING",
            flow_run_id=flow_run_id,
            task_run={"task_key": "k", "dynamic_key": "d"},
        )

        send_events(client, running)

        assert read_run(client, created["id"])["state_type"] == "RUNNING"
        assert client.get(f"/api/task_runs/{other_id}").status_code == 404
        assert states_of(client, created["id"])[-1]["id"] == running["id"]

    def test_a_new_run_of_a_flow_run_keeps_it(self, client: TestClient) -> None:
        flow_run_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())

        send_events(
            client,
            task_run_event(
                run_id,
                "PENDING",
                flow_run_id=flow_run_id,
                task_run={"task_key": "k", "dynamic_key": "d"},
            ),
        )

        run = read_run(client, run_id)
        assert run["flow_run_id"] == flow_run_id
        assert run["state"]["state_details"]["flow_run_id"] == flow_run_id

    @pytest.mark.parametrize(("first", "then"), [("F1", None), (None, "F2"), ("F1", "F2")], ids=str)
    def test_a_newer_event_brings_its_flow_run(
        self, client: TestClient, first: str | None, then: str | None
    ) -> None:
        flow_runs = {"F1": str(uuid.uuid4()), "F2": str(uuid.uuid4()), None: None}
        run_id, keys, now = (
            str(uuid.uuid4()),
            {"task_key": "k", "dynamic_key": "d"},
            datetime.now(UTC),
        )
        pending = task_run_event(
            run_id, "PENDING", occurred=now, flow_run_id=flow_runs[first], task_run=keys
        )
        running = task_run_event(
            run_id,
            "RUNNING",
            occurred=now + timedelta(seconds=1),
            flow_run_id=flow_runs[then],
            task_run=keys,
        )

        send_events(client, pending, running)

        run = read_run(client, run_id)
        assert run["flow_run_id"] == flow_runs[then]
        assert run["state"]["state_details"]["flow_run_id"] == flow_runs[then]

    @pytest.mark.parametrize("reported", ["", None])
    def test_a_name_reported_empty_is_a_new_random_name(
        self, client: TestClient, reported: str | None
    ) -> None:
        run = deferred_run(client)

        send_events(client, task_run_event(run["id"], "PENDING", task_run={"name": reported}))

        name = read_run(client, run["id"])["name"]
        assert name not in ("", run["name"])
        assert re.fullmatch(r"[a-z]+-[a-z]+", name)

    def test_an_older_event_leaves_the_flow_run_as_it_is(self, client: TestClient) -> None:
        run_id, flow_run_id, now = str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC)
        keys = {"task_key": "k", "dynamic_key": "d"}
        running = task_run_event(
            run_id, "RUNNING", occurred=now, flow_run_id=flow_run_id, task_run=keys
        )
        older = task_run_event(run_id, "PENDING", occurred=now - timedelta(seconds=1))

        send_events(client, running, older)

        assert read_run(client, run_id)["flow_run_id"] == flow_run_id
        assert len(states_of(client, run_id)) == 2

    @pytest.mark.parametrize(
        "inputs",
        [
            {"x": [{"input_type": "bogus"}]},
            {"x": [{"input_type": "task_run"}]},
            {"x": [{"input_type": "task_run", "id": "not-a-uuid"}]},
            {"x": [{"input_type": "parameter"}]},
            {"x": [{}]},
        ],
    )
    def test_run_inputs_the_api_would_refuse_are_not_recorded(
        self, client: TestClient, inputs: dict[str, Any]
    ) -> None:
        new_id, existing = str(uuid.uuid4()), deferred_run(client)
        fields = {"task_key": "k", "dynamic_key": "d", "task_inputs": inputs}

        send_events(
            client,
            task_run_event(new_id, "PENDING", task_run=fields),
            task_run_event(existing["id"], "PENDING", task_run={"task_inputs": inputs}),
        )

        assert client.get(f"/api/task_runs/{new_id}").status_code == 404
        assert read_run(client, existing["id"])["state_type"] == "SCHEDULED"
        listed = client.post("/api/task_runs/filter", json={})
        assert listed.status_code == 200
        assert [run["id"] for run in listed.json()] == [existing["id"]]

    def test_nul_in_reported_text_is_recorded_as_a_replacement_character(
        self, client: TestClient
    ) -> None:
        run_id = str(uuid.uuid4())
        fields = {
            "name": "n\x00",
            "task_key": "k\x00",
            "dynamic_key": "d\x00",
            "task_version": "v\x00",
            "cache_key": "c\x00",
            "tags": ["t\x00"],
        }
        failed = task_run_event(
            run_id,
            "FAILED",
            task_run=fields,
            name="Fail\x00ed",
            message="bytes \x00 here",
            state_details={"cache_key": "s\x00"},
        )
        failed["event"] = "prefect.task-run.Failed"

        send_events(client, failed)

        run = read_run(client, run_id)
        reported = {name: run[name] for name in fields}
        assert reported == {
            "name": "n\ufffd",
            "task_key": "k\ufffd",
            "dynamic_key": "d\ufffd",
            "task_version": "v\ufffd",
            "cache_key": "c\ufffd",
            # A run's tags are not a column of their own: a tag keeps its NUL, as at create.
            "tags": ["t\x00"],
        }
        assert (run["state_type"], run["state_name"]) == ("FAILED", "Fail\ufffded")
        assert run["state"]["message"] == "bytes \ufffd here"
        assert run["state"]["state_details"]["cache_key"] == "s\ufffd"

    @pytest.mark.parametrize(
        "fields",
        [
            {"task_key": "k" * 301},
            {"dynamic_key": "d" * 351},
            {"name": "n" * 601},
            {"tags": ["t" * 601]},
            {"cache_key": "c" * 2001},
            {"total_run_time": 1.5e308},
            {"start_time": "2016-12-31T23:59:60Z"},
            {"expected_start_time": "0000-12-31T23:00:00-14:00"},
        ],
        ids=[
            "task_key",
            "dynamic_key",
            "name",
            "tag",
            "cache_key",
            "total_run_time",
            "leap-second",
            "year-0",
        ],
    )
    def test_values_beyond_the_apis_bounds_are_not_recorded(
        self, client: TestClient, database: Database, fields: dict[str, Any]
    ) -> None:
        run_id = str(uuid.uuid4())
        too_long = task_run_event(
            run_id, "PENDING", task_run={"task_key": "k", "dynamic_key": "d", **fields}
        )

        send_events(client, too_long)

        assert client.get(f"/api/task_runs/{run_id}").status_code == 404
        assert too_long["id"] in stored_event_ids(database)

    def test_run_inputs_are_recorded_as_the_api_gives_them(self, client: TestClient) -> None:
        run_id, upstream = str(uuid.uuid4()), str(uuid.uuid4())
        inputs = {
            "x": [{"input_type": "task_run", "id": upstream}],
            "y": [
                {"input_type": "parameter", "name": "p"},
                {"input_type": "constant", "type": "int"},
            ],
        }
        fields = {"task_key": "k", "dynamic_key": "d", "task_inputs": inputs}

        send_events(client, task_run_event(run_id, "PENDING", task_run=fields))

        assert read_run(client, run_id)["task_inputs"] == inputs

    def test_an_event_sent_again_changes_nothing(
        self, client: TestClient, database: Database
    ) -> None:
        run = deferred_run(client)
        running = task_run_event(run["id"], "RUNNING")

        send_events(client, running, running)
        send_events(client, running)

        assert stored_event_ids(database).count(running["id"]) == 1
        assert len(states_of(client, run["id"])) == 2

    def test_the_delay_sides_scheduled_event_changes_nothing(self, client: TestClient) -> None:
        run = deferred_run(client)
        echo = task_run_event(
            run["id"],
            "SCHEDULED",
            event_id=run["state_id"],
            occurred=datetime.fromisoformat(run["state"]["timestamp"]),
        )

        send_events(client, echo)

        assert without_estimates(read_run(client, run["id"])) == without_estimates(run)
        assert len(states_of(client, run["id"])) == 1

    def test_events_not_orchestrated_by_a_client_are_stored_only(
        self, client: TestClient, database: Database
    ) -> None:
        run = deferred_run(client)
        server_side = task_run_event(run["id"], "RUNNING", orchestration=None)
        other = {**task_run_event(run["id"], "RUNNING"), "event": "prefect.flow-run.Running"}

        send_events(client, server_side, other)

        assert read_run(client, run["id"])["state_type"] == "SCHEDULED"
        assert set(stored_event_ids(database)) == {server_side["id"], other["id"]}

    @pytest.mark.parametrize(
        "change",
        [
            lambda e: e["resource"].pop("prefect.resource.id"),
            lambda e: e["related"].append({"prefect.resource.id": "prefect.flow.x"}),
            lambda e: e.update(id="not-a-uuid"),
            lambda e: e.update(occurred="yesterday"),
            lambda e: e.update(occurred="2016-12-31T23:59:60Z"),
            lambda e: e.update(occurred="0000-01-01T00:00:00Z"),
            lambda e: e.update(occurred="0000-12-31T23:00:00-14:00"),
            lambda e: e["payload"].update(padding="x" * 1_500_000),
            lambda e: e["payload"].update(deep=nested(64)),
            lambda e: e.update(event="prefect.task-run.Pen\x00ding"),
            lambda e: e["resource"].update({"prefect.resource.id": "prefect.task-run.\x00"}),
            lambda e: e["resource"].update({"prefect.resource.id": "x." + wide_text(599)}),
            lambda e: e["payload"].update(x=float("nan")),
            lambda e: e["payload"].update(x=float("inf")),
            lambda e: e["payload"]["task_run"].update(name="a\ud800"),
        ],
        ids=[
            "no-resource-id",
            "related-without-role",
            "bad-id",
            "bad-time",
            "leap-second",
            "year-0",
            "year-0-west-of-utc",
            "too-large",
            "deep",
            "nul-in-name",
            "nul-in-resource-id",
            "resource-id-too-long",
            "nan",
            "infinity",
            "lone-surrogate",
        ],
    )
    def test_an_invalid_event_is_not_stored_and_the_socket_stays_open(
        self, client: TestClient, database: Database, change: Any
    ) -> None:
        run = deferred_run(client)
        invalid = task_run_event(run["id"], "PENDING")
        change(invalid)
        valid = task_run_event(run["id"], "RUNNING")

        with authenticated(client, EVENTS_IN) as socket:
            # As a client's JSON encoder writes it: a lone surrogate as an escape.
            socket.send_text(json.dumps(invalid))
            socket.send_text("not json")
            socket.send_text("[" * 100_000 + "]" * 100_000)
            socket.send_json(valid)
            eventually(lambda: stored_event_ids(database) == [valid["id"]])

        assert read_run(client, run["id"])["state_type"] == "RUNNING"

    def test_an_event_about_no_task_run_is_stored_not_recorded(
        self, client: TestClient, database: Database
    ) -> None:
        broken = task_run_event("not-a-uuid", "RUNNING")

        send_events(client, broken)

        assert stored_event_ids(database) == [broken["id"]]

    @pytest.mark.parametrize(
        "count",
        [{"run_count": 2**64}, {"run_count": -1}, {"flow_run_run_count": -1}],
        ids=["beyond-the-columns", "negative", "negative-flow-run-count"],
    )
    def test_a_count_no_run_can_have_is_stored_not_recorded(
        self, client: TestClient, database: Database, count: dict[str, int]
    ) -> None:
        run_id = str(uuid.uuid4())
        fields = {"task_key": "k", "dynamic_key": "d", **count}
        broken = task_run_event(run_id, "RUNNING", task_run=fields)

        send_events(client, broken)

        assert stored_event_ids(database) == [broken["id"]]
        assert client.get(f"/api/task_runs/{run_id}").status_code == 404

    def test_a_run_count_at_the_columns_maximum_stays_there_when_the_run_starts_again(
        self, client: TestClient
    ) -> None:
        run_id = str(uuid.uuid4())
        fields = {"task_key": "k", "dynamic_key": "most", "run_count": 2**31 - 1}
        send_events(client, task_run_event(run_id, "RUNNING", task_run=fields))

        response = set_state(client, run_id, "RUNNING")

        assert response.status_code == 201, response.text
        assert read_run(client, run_id)["run_count"] == 2**31 - 1

    def test_any_other_failure_to_record_is_stored_not_recorded(
        self,
        client: TestClient,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        def fail(*_: Any) -> None:
            raise OverflowError("a value: secret-value")

        monkeypatch.setattr(events_service, "record_task_run_event", fail)
        caplog.set_level(logging.WARNING, logger="app.services.events")
        report = task_run_event(str(uuid.uuid4()), "RUNNING")

        send_events(client, report)

        assert stored_event_ids(database) == [report["id"]]
        [record] = [r for r in caplog.records if r.name == "app.services.events"]
        assert record.getMessage().endswith(
            "stored, not recorded: a value of its report could not be stored (OverflowError)"
        )

    def test_an_occurred_time_in_lower_case_is_read(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        fields = {"task_key": "k", "dynamic_key": "lower-case"}
        running = task_run_event(run_id, "RUNNING", task_run=fields)
        running["occurred"] = "2026-11-30t06:47:59.409977z"

        send_events(client, running)

        assert read_run(client, run_id)["state"]["timestamp"] == "2026-11-30T06:47:59.409977Z"

    @pytest.mark.usefixtures("server_time_in_tokyo")
    def test_instants_without_an_offset_are_read_in_utc(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        fields = {
            "task_key": "k",
            "dynamic_key": "naive",
            "start_time": "2026-11-30T06:47:59.409977",
            "expected_start_time": "0001-01-01T00:00:00",
        }

        send_events(client, task_run_event(run_id, "RUNNING", task_run=fields))

        run = read_run(client, run_id)
        assert run["start_time"] == "2026-11-30T06:47:59.409977Z"
        assert run["expected_start_time"] == "0001-01-01T00:00:00Z"


class TestFaults:
    """A fault of the service while it serves a socket: the client is told to reconnect, and
    the log names the fault without quoting what the socket carried.
    """

    def fail_storing(self, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
        def fail(**_: Any) -> bool:
            raise error

        monkeypatch.setattr(events_handlers, "receive_event", fail)

    def test_an_unexpected_error_closes_with_1011_and_is_logged_without_its_message(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.fail_storing(monkeypatch, ValueError("row contents: secret-value"))

        with authenticated(client, EVENTS_IN) as socket:
            socket.send_json(task_run_event(str(uuid.uuid4()), "RUNNING"))
            assert closed(socket) == (1011, "Internal Server Error")

        [record] = [r for r in caplog.records if r.name == "app.contract.websockets"]
        logged = record.getMessage()
        assert record.levelno == logging.ERROR
        assert logged.startswith(f"websocket {EVENTS_IN}: unhandled error: builtins.ValueError")
        assert "in fail" in logged  # where it was raised
        assert "secret" not in logged
        assert record.exc_info is None

    def test_an_unavailable_database_closes_with_1013_and_a_warning(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.fail_storing(monkeypatch, DatabaseUnavailable("SQLITE_FULL"))

        with authenticated(client, EVENTS_IN) as socket:
            socket.send_json(task_run_event(str(uuid.uuid4()), "RUNNING"))
            assert closed(socket) == (1013, "The database is unavailable. Reconnect later.")

        [record] = [r for r in caplog.records if r.name == "app.contract.websockets"]
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            f"websocket {EVENTS_IN}: database unavailable (SQLITE_FULL):"
            " app.db.database.DatabaseUnavailable"
        )

    def test_an_unrecordable_report_is_logged_by_its_problems_not_its_values(
        self, client: TestClient, database: Database, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.services.events")
        report = task_run_event(str(uuid.uuid4()), "RUNNING")
        report["payload"]["validated_state"]["type"] = "secret-state"

        send_events(client, report)

        [record] = [r for r in caplog.records if r.name == "app.services.events"]
        logged = record.getMessage()
        assert "stored, not recorded: the payload is not a task-run report:" in logged
        assert "validated_state.type: Input should be 'SCHEDULED'" in logged
        assert "secret" not in logged
        assert stored_event_ids(database)[-1] == report["id"]

    def test_an_invalid_event_is_logged_by_place_and_rule_not_its_values(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.handlers.events")
        invalid = task_run_event(str(uuid.uuid4()), "PENDING")
        invalid["id"] = "secret-id"
        invalid["resource"]["prefect.resource.id"] = ["secret-resource"]
        del invalid["event"]

        send_events(client, invalid)

        [record] = [r for r in caplog.records if r.name == "app.handlers.events"]
        assert record.getMessage() == (
            "an event was not stored: event: missing; id: fails 'format';"
            " resource/prefect.resource.id: fails 'type'"
        )


class TestEventsOut:
    def follow(self, socket: Any, *, backfill: bool | None = None, **criteria: Any) -> None:
        since = criteria.pop("since", datetime.now(UTC) - timedelta(minutes=1))
        options = {} if backfill is None else {"backfill": backfill}
        socket.send_json(
            {
                "type": "filter",
                **options,
                "filter": {
                    "occurred": {"since": since.isoformat(), "until": "2099-01-01T00:00:00Z"},
                    "event": None,
                    "resource": None,
                    "related": None,
                    "any_resource": None,
                    "id": {"id": []},
                    "text": None,
                    "order": "DESC",
                    **criteria,
                },
            }
        )

    def test_events_past_the_retention_are_gone_and_recent_ones_stay(
        self, app_keeping_events_briefly: FlaskApp
    ) -> None:
        run_id = str(uuid.uuid4())
        old = task_run_event(run_id, "PENDING")
        recent = task_run_event(run_id, "RUNNING")

        with app_keeping_events_briefly.test_client() as client:
            send_events(client, old)
            # The pruner looks once per retention period: two of them pass.
            time.sleep(3 * BRIEF_RETENTION_SECONDS)
            send_events(client, recent)
            with authenticated(client, EVENTS_OUT) as follower:
                self.follow(follower, event={"exclude_prefix": ["test."]})
                first = follower.receive_json()

        assert first["event"]["id"] == recent["id"]

    def test_stored_events_first_oldest_first_then_new_ones(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        older = task_run_event(run_id, "PENDING", occurred=now - timedelta(seconds=20))
        newer = task_run_event(run_id, "RUNNING", occurred=now - timedelta(seconds=10))
        send_events(client, newer, older)
        live = task_run_event(run_id, "COMPLETED")

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(follower, event={"exclude_prefix": ["test."]})
            first, second = follower.receive_json(), follower.receive_json()
            send_events(client, live)
            third = follower.receive_json()

        assert [frame["type"] for frame in (first, second, third)] == ["event"] * 3
        assert [frame["event"]["id"] for frame in (first, second, third)] == [
            older["id"], newer["id"], live["id"],
        ]  # fmt: skip
        assert frame_validator().errors("received_event", third) == []
        assert third["event"]["payload"] == live["payload"]
        assert "received" in third["event"]

    def test_without_backfill_only_new_events(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        stored = task_run_event(run_id, "PENDING", occurred=datetime.now(UTC))
        send_events(client, stored)
        live = task_run_event(run_id, "RUNNING")

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(follower, backfill=False, event={"exclude_prefix": ["test."]})
            send_events(client, live)
            first = follower.receive_json()

        assert first["event"]["id"] == live["id"]

    def test_instants_in_lower_case_are_read(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        event = task_run_event(run_id, "PENDING")
        send_events(client, event)
        since = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dt%H:%M:%Sz")

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(
                follower,
                occurred={"since": since, "until": "2099-01-01t00:00:00z"},
                event={"exclude_prefix": ["test."]},
            )
            first = follower.receive_json()

        assert first["event"]["id"] == event["id"]

    def test_resource_distinct_false_as_prefect_sends_it(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        event = task_run_event(run_id, "PENDING")
        send_events(client, event)
        resource = {"id": [f"prefect.task-run.{run_id}"], "id_prefix": None, "distinct": False}

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(follower, resource=resource)
            first = follower.receive_json()

        assert first["event"]["id"] == event["id"]

    def test_only_matching_events(self, client: TestClient) -> None:
        mine, other = str(uuid.uuid4()), str(uuid.uuid4())
        send_events(
            client,
            task_run_event(other, "COMPLETED"),
            task_run_event(mine, "RUNNING"),
            wanted := task_run_event(mine, "COMPLETED"),
        )

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(
                follower,
                event={"name": ["prefect.task-run.Completed", "prefect.task-run.Failed"]},
                resource={"id": [f"prefect.task-run.{mine}"]},
            )
            send_events(client, last := task_run_event(mine, "FAILED"))
            received = [follower.receive_json()["event"]["id"] for _ in range(2)]

        assert received == [wanted["id"], last["id"]]

    def test_at_most_fifteen_minutes_back(self, client: TestClient) -> None:
        run_id = str(uuid.uuid4())
        old = task_run_event(run_id, "PENDING", occurred=datetime.now(UTC) - timedelta(minutes=20))
        recent = task_run_event(
            run_id, "RUNNING", occurred=datetime.now(UTC) - timedelta(minutes=10)
        )
        send_events(client, old, recent)

        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(follower, since=datetime.now(UTC) - timedelta(hours=1))
            received = follower.receive_json()

        assert received["event"]["id"] == recent["id"]

    @pytest.mark.parametrize(
        ("criteria", "reason"),
        [
            ({"text": {"query": "x"}}, "filtering by 'text' is not supported"),
            ({"resource": {"labels": {"a": "b"}}}, "filtering by resource.labels is not supported"),
            ({"event": {"name": "one"}}, "invalid filter"),
            ({"id": {"id": [str(uuid.uuid4()) for _ in range(1001)]}}, "invalid filter"),
            ({"event": {"name": [f"e{n}" for n in range(1001)]}}, "invalid filter"),
            ({"related": [{"role": ["r"]}] * 101}, "invalid filter"),
            ({"occurred": {"since": "2016-12-31T23:59:60Z"}}, "invalid filter: occurred.since"),
            ({"occurred": {"until": "0000-01-01T00:00:00Z"}}, "invalid filter: occurred.until"),
            (
                {"occurred": {"until": "0000-12-31T23:00:00-14:00"}},
                "invalid filter: occurred.until",
            ),
        ],
        ids=[
            "text",
            "labels",
            "name-not-a-list",
            "ids",
            "names",
            "related",
            "leap-second",
            "year-0",
            "year-0-west-of-utc",
        ],
    )
    def test_a_filter_that_cannot_be_applied_is_closed_with_1008(
        self, client: TestClient, criteria: dict[str, Any], reason: str
    ) -> None:
        with authenticated(client, EVENTS_OUT) as follower:
            self.follow(follower, **criteria)
            code, said = closed(follower)

        assert code == 1008
        assert said.startswith(reason)

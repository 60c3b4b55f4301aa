"""What `/metrics` tells of the websocket side, on every backend: open sockets by channel,
deliveries by outcome, events received by outcome, events pruned, and the queue of
background runs counted at each scrape. tests/serving/test_metrics.py checks the sums of a
two-worker server.

The counters and the socket gauge belong to the process, which every test's app shares:
each test reads how much they moved. The count of events pruned is checked with the pruner
(tests/services/test_event_retention.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from starlette.testclient import TestClient

from app.db.database import Database, DatabaseUnavailable
from app.db.tables import task_run_delivery
from tests.support.api import set_state
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


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of the sample `name` with these labels in a scrape; 0 when it is absent."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def deliveries(client: TestClient, outcome: str) -> float:
    return metric(client, "taskrun_task_run_deliveries_total", outcome=outcome)


def events_received(client: TestClient, outcome: str) -> float:
    return metric(client, "taskrun_events_received_total", outcome=outcome)


def queue(client: TestClient, status: str) -> float:
    return metric(client, "taskrun_task_run_queue", status=status)


class TestOpenSockets:
    @pytest.mark.parametrize("path", [SUBSCRIPTION, EVENTS_IN, EVENTS_OUT])
    def test_a_socket_counts_while_it_is_served(self, client: TestClient, path: str) -> None:
        def open_sockets() -> float:
            return metric(client, "taskrun_websockets_open", channel=path)

        before = open_sockets()
        with authenticated(client, path):
            eventually(lambda: open_sockets() == before + 1)
        eventually(lambda: open_sockets() == before)

    def test_a_socket_refused_at_its_handshake_is_not_counted(self, client: TestClient) -> None:
        before = metric(client, "taskrun_websockets_open", channel=EVENTS_IN)
        with client.websocket_connect(EVENTS_IN, subprotocols=["prefect"]) as socket:
            socket.send_json({"type": "subscribe"})
            assert closed(socket)[0] == 1008
            assert metric(client, "taskrun_websockets_open", channel=EVENTS_IN) == before


class TestDeliveries:
    def test_an_acknowledged_delivery(self, client: TestClient) -> None:
        before = deliveries(client, "acknowledged")
        deferred_run(client)

        with subscribed(client, "add-1") as socket:
            socket.receive_json()
            socket.send_json({"type": "ack"})
            eventually(lambda: deliveries(client, "acknowledged") == before + 1)

    def test_a_delivery_the_worker_left_is_returned(self, client: TestClient) -> None:
        before = deliveries(client, "returned")
        deferred_run(client)

        with subscribed(client, "add-1") as socket:
            socket.receive_json()
        eventually(lambda: deliveries(client, "returned") == before + 1)

    def test_a_delivery_answered_otherwise_is_returned(self, client: TestClient) -> None:
        before = deliveries(client, "returned")
        deferred_run(client)

        with subscribed(client, "add-1") as socket:
            socket.receive_json()
            socket.send_json({"type": "nack"})
            assert closed(socket)[0] == 4001
        assert deliveries(client, "returned") == before + 1

    def test_a_delivery_the_worker_quit_is_dropped(self, client: TestClient) -> None:
        before = deliveries(client, "dropped")
        deferred_run(client)

        with subscribed(client, "add-1") as socket:
            socket.receive_json()
            socket.send_json({"type": "quit"})
            assert closed(socket) == (1000, "")
        assert deliveries(client, "dropped") == before + 1


class TestEventsReceived:
    def test_stored_duplicate_and_refused(self, client: TestClient) -> None:
        before = {
            outcome: events_received(client, outcome)
            for outcome in ("stored", "duplicate", "refused")
        }
        run = deferred_run(client)
        event = task_run_event(run["id"], "PENDING")

        # send_events adds one stored event of its own, to know when the others were handled.
        send_events(client, event, event, {"event": "not an event"})

        assert events_received(client, "stored") == before["stored"] + 2
        assert events_received(client, "duplicate") == before["duplicate"] + 1
        assert events_received(client, "refused") == before["refused"] + 1


class TestQueue:
    def test_waiting_then_delivered_then_gone(self, client: TestClient) -> None:
        run = deferred_run(client, "queued-1")
        assert (queue(client, "waiting"), queue(client, "delivered")) == (1, 0)

        with subscribed(client, "queued-1") as socket:
            assert socket.receive_json()["id"] == run["id"]
            assert (queue(client, "waiting"), queue(client, "delivered")) == (0, 1)
            socket.send_json({"type": "ack"})
            eventually(lambda: queue(client, "delivered") == 0)
        assert queue(client, "waiting") == 0

    def test_a_run_that_left_scheduled_is_not_counted(self, client: TestClient) -> None:
        run = deferred_run(client, "queued-2")
        set_state(client, run["id"], "PENDING")

        assert (queue(client, "waiting"), queue(client, "delivered")) == (0, 0)

    def test_an_expired_claim_waits_again(self, client: TestClient, database: Database) -> None:
        deferred_run(client, "queued-3")
        with database.transaction() as connection:
            connection.execute(
                update(task_run_delivery).values(
                    claim_id=uuid.uuid4(), claimed_until=datetime.now(UTC) - timedelta(seconds=1)
                )
            )

        assert (queue(client, "waiting"), queue(client, "delivered")) == (1, 0)

    def test_the_oldest_waiting_runs_age(self, client: TestClient, database: Database) -> None:
        name = "taskrun_task_run_queue_oldest_waiting_seconds"
        assert metric(client, name) == 0
        deferred_run(client, "queued-4")
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        with database.transaction() as connection:
            connection.execute(update(task_run_delivery).values(enqueued=an_hour_ago))
        deferred_run(client, "queued-4")

        assert 3600 <= metric(client, name) < 3600 + 60

    def test_an_unavailable_database_leaves_the_queue_out(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def unavailable(**_: object) -> None:
            raise DatabaseUnavailable("the database is down")

        monkeypatch.setattr("app.main.queue_sizes", unavailable)

        response = client.get("/metrics")

        assert response.status_code == 200
        assert "taskrun_http_requests_total" in response.text
        assert "taskrun_task_run_queue" not in response.text
        assert "/metrics: the queue was not counted: the database is down" in caplog.text

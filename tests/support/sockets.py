"""Helpers for tests of the websocket channels through a Starlette TestClient."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient, WebSocketTestSession

from app.db.database import Database
from app.db.tables import event
from app.main import database_of

SUBSCRIPTION = "/api/task_runs/subscriptions/scheduled"
EVENTS_IN = "/api/events/in"
EVENTS_OUT = "/api/events/out"


@contextmanager
def authenticated(
    client: TestClient, path: str, *, token: str | None = None
) -> Iterator[WebSocketTestSession]:
    """A websocket of `path` with the `prefect` subprotocol, past the auth exchange."""
    with client.websocket_connect(path, subprotocols=["prefect"]) as socket:
        socket.send_json({"type": "auth", "token": token})
        assert socket.receive_json() == {"type": "auth_success"}
        yield socket


@contextmanager
def subscribed(client: TestClient, *task_keys: str) -> Iterator[WebSocketTestSession]:
    """A task worker's socket subscribed to `task_keys`."""
    with authenticated(client, SUBSCRIPTION) as socket:
        socket.send_json({"type": "subscribe", "keys": list(task_keys), "client_id": "test-worker"})
        yield socket


def closed(socket: WebSocketTestSession) -> tuple[int, str]:
    """The (code, reason) the service closed the socket with."""
    message = socket.receive()
    assert message["type"] == "websocket.close", message
    return message["code"], message.get("reason", "")


def deferred_run(client: TestClient, task_key: str = "add-1", **state: Any) -> dict[str, Any]:
    """Create a background task's run, as `Task.delay()` does: deferred and SCHEDULED."""
    details = {
        "deferred": True,
        "task_parameters_id": str(uuid.uuid4()),
        **state.pop("details", {}),
    }
    body = {
        "task_key": task_key,
        "dynamic_key": f"{task_key}-{uuid.uuid4().hex}",
        "state": {"type": "SCHEDULED", "state_details": details, **state},
    }
    response = client.post("/api/task_runs/", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def task_run_event(
    task_run_id: str,
    state_type: str,
    *,
    occurred: datetime | None = None,
    event_id: str | None = None,
    task_run: dict[str, Any] | None = None,
    flow_run_id: str | None = None,
    orchestration: str | None = "client",
    **state: Any,
) -> dict[str, Any]:
    """A `prefect.task-run.<Name>` event as Prefect's task engine sends it."""
    name = state.pop("name", state_type.title())
    resource = {
        "prefect.resource.id": f"prefect.task-run.{task_run_id}",
        "prefect.resource.name": "a-task",
        "prefect.state-name": name,
        "prefect.state-type": state_type,
    }
    if orchestration is not None:
        resource["prefect.orchestration"] = orchestration
    related = (
        [
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        ]
        if flow_run_id
        else []
    )
    return {
        "occurred": (occurred or datetime.now(UTC)).isoformat(),
        "event": f"prefect.task-run.{name}",
        "resource": resource,
        "related": related,
        "payload": {
            "intended": {"from": None, "to": state_type},
            "initial_state": None,
            "validated_state": {"type": state_type, "name": name, "state_details": {}, **state},
            "task_run": task_run or {},
        },
        "id": event_id or str(uuid.uuid4()),
        "follows": None,
    }


def eventually(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds. A socket sends no answer to an `ack` or an event, and
    the test client cancels the service's side of a socket when it closes it: so a test waits
    for the outcome to show before closing.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def send_events(client: TestClient, *events: dict[str, Any]) -> None:
    """Send events, and wait until the service has handled them: a last event of its own
    is stored.
    """
    database = database_of(client.app)
    marker = {**task_run_event(str(uuid.uuid4()), "PENDING"), "event": "test.marker"}
    with authenticated(client, EVENTS_IN) as socket:
        for sent in events:
            socket.send_json(sent)
        socket.send_json(marker)
        eventually(lambda: is_stored(database, marker["id"]))


def is_stored(database: Database, event_id: str) -> bool:
    with database.snapshot() as connection:
        query = select(event.c.id).where(event.c.id == uuid.UUID(event_id))
        return connection.scalar(query) is not None

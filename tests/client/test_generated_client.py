"""A client generated from openapi.yaml (openapi-python-client, as `make client` runs it)
calls every operation of the document on a live server.

When the document gains an operation, the test of that operation fails, naming it, until an
exercise for it is added to EXERCISES.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from openapi_python_client.strings import PythonIdentifier

from app.codegen.client import DEFAULT_OUTPUT, PACKAGE, generate_client
from tests.support.databases import sqlite_database
from tests.support.server import running_server

REPOSITORY = Path(__file__).resolve().parents[2]
SPEC_PATH = REPOSITORY / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True)
class Operation:
    """An operation of the document."""

    operation_id: str
    method: str
    path: str

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (its method, and its path under /api) is one of this operation."""
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(self.path))
        return method == self.method.upper() and re.fullmatch(f"/api{pattern}", path) is not None


def document_operations() -> list[Operation]:
    return [
        Operation(operation["operationId"], method, path)
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


@dataclass
class Session:
    """The generated package, its client pointed at a live server, and what it sent."""

    package: ModuleType
    client: Any
    sent: list[tuple[str, str]] = field(default_factory=list)

    @property
    def models(self) -> Any:
        return self.package.models

    def operation(self, operation_id: str) -> Any:
        """The generated module of an operation (the generator names it after the id)."""
        name = PythonIdentifier(operation_id, prefix="field_")
        for candidate in Path(self.package.api.__path__[0]).glob(f"*/{name}.py"):
            return importlib.import_module(f"{PACKAGE}.api.{candidate.parent.name}.{name}")
        raise AssertionError(f"the generated client has no module for {operation_id}")


# --- one exercise per operation ---------------------------------------------------------


def create_task_run(operation: Any, session: Session) -> None:
    body = session.models.TaskRunCreate(task_key="generated-client", dynamic_key="0")

    created = operation.sync_detailed(client=session.client, body=body)
    again = operation.sync_detailed(client=session.client, body=body, x_prefect_api_version="0.8.4")

    assert created.status_code == 201
    assert isinstance(created.parsed, session.models.TaskRun)
    assert created.parsed.task_key == "generated-client"
    assert created.parsed.state.type_ == session.models.StateType.PENDING
    assert again.status_code == 200
    assert again.parsed.id == created.parsed.id


def read_task_run(operation: Any, session: Session) -> None:
    create = session.operation("create_task_run_task_runs__post")
    body = session.models.TaskRunCreate(task_key="to-read", dynamic_key="0", tags=["a", "b"])
    run = create.sync(client=session.client, body=body)

    read = operation.sync_detailed(run.id, client=session.client)
    missing = operation.sync_detailed(uuid.UUID(int=1), client=session.client)

    assert read.status_code == 200
    assert isinstance(read.parsed, session.models.TaskRun)
    assert (read.parsed.id, read.parsed.task_key, read.parsed.tags) == (
        run.id,
        "to-read",
        ["a", "b"],
    )
    assert read.parsed.state.id == run.state.id
    assert missing.status_code == 404
    assert missing.parsed.detail == "Task run not found"


def a_run(session: Session, task_key: str) -> Any:
    create = session.operation("create_task_run_task_runs__post")
    body = session.models.TaskRunCreate(task_key=task_key, dynamic_key=uuid.uuid4().hex)
    return create.sync(client=session.client, body=body)


def propose(session: Session, state_type: str) -> Any:
    state = session.models.StateCreate(type_=session.models.StateType(state_type))
    return session.models.BodySetTaskRunStateTaskRunsIdSetStatePost(state=state)


def set_task_run_state(operation: Any, session: Session) -> None:
    run = a_run(session, "to-run")

    running = operation.sync_detailed(
        run.id, client=session.client, body=propose(session, "RUNNING")
    )
    completed = operation.sync_detailed(
        run.id, client=session.client, body=propose(session, "COMPLETED")
    )
    aborted = operation.sync_detailed(
        run.id, client=session.client, body=propose(session, "CRASHED")
    )

    assert running.status_code == 201
    assert isinstance(running.parsed, session.models.OrchestrationResult)
    assert running.parsed.status == session.models.SetStateStatus.ACCEPT
    assert running.parsed.state.type_ == session.models.StateType.RUNNING
    assert completed.status_code == 201
    assert aborted.status_code == 200
    assert aborted.parsed.status == session.models.SetStateStatus.ABORT
    assert aborted.parsed.details.reason == "Run is already COMPLETED."


def update_task_run(operation: Any, session: Session) -> None:
    run = a_run(session, "to-rename")

    renamed = operation.sync_detailed(
        run.id, client=session.client, body=session.models.TaskRunUpdate(name="renamed")
    )

    read = session.operation("read_task_run_task_runs__id__get")
    assert renamed.status_code == 204
    assert read.sync(run.id, client=session.client).name == "renamed"


def delete_task_run(operation: Any, session: Session) -> None:
    run = a_run(session, "to-delete")

    deleted = operation.sync_detailed(run.id, client=session.client)
    again = operation.sync_detailed(run.id, client=session.client)

    assert deleted.status_code == 204
    assert again.status_code == 404
    assert again.parsed.detail == "Task run not found"


def read_task_run_states(operation: Any, session: Session) -> None:
    run = a_run(session, "with-history")
    session.operation("set_task_run_state_task_runs__id__set_state_post").sync(
        run.id, client=session.client, body=propose(session, "RUNNING")
    )

    states = operation.sync(client=session.client, task_run_id=run.id)

    assert [state.type_ for state in states] == [
        session.models.StateType.PENDING,
        session.models.StateType.RUNNING,
    ]
    assert states[0].id == run.state.id


def read_task_run_state(operation: Any, session: Session) -> None:
    run = a_run(session, "state-to-read")

    found = operation.sync_detailed(run.state.id, client=session.client)
    missing = operation.sync_detailed(uuid.UUID(int=1), client=session.client)

    assert found.status_code == 200
    assert (found.parsed.id, found.parsed.type_) == (run.state.id, session.models.StateType.PENDING)
    assert missing.status_code == 404
    assert missing.parsed.detail == "Task run state not found"


def health_check(operation: Any, session: Session) -> None:
    assert operation.sync(client=session.client) is True


def perform_readiness_check(operation: Any, session: Session) -> None:
    ready = operation.sync_detailed(client=session.client)

    assert ready.status_code == 200
    assert ready.parsed.message == "OK"


def server_version(operation: Any, session: Session) -> None:
    assert operation.sync(client=session.client) == SPEC["info"]["version"]


def hello(operation: Any, session: Session) -> None:
    assert operation.sync(client=session.client) == "👋"


def create_csrf_token(operation: Any, session: Session) -> None:
    response = operation.sync_detailed(client=session.client, client_query="a-client")

    assert response.status_code == 422
    assert response.parsed.detail == "CSRF protection is disabled."


def read_server_version(operation: Any, session: Session) -> None:
    assert re.fullmatch(r"3\.[0-9]+\.[0-9]+", operation.sync(client=session.client))


def tagged_runs(session: Session, task_key: str) -> list[Any]:
    """Three runs of `task_key`: two tagged "pick", one not."""
    create = session.operation("create_task_run_task_runs__post")
    return [
        create.sync(
            client=session.client,
            body=session.models.TaskRunCreate(
                task_key=task_key, dynamic_key=str(number), tags=tags
            ),
        )
        for number, tags in enumerate([["pick"], ["pick", "x"], []])
    ]


def read_task_runs(operation: Any, session: Session) -> None:
    runs = tagged_runs(session, "to-filter")
    models = session.models
    body = models.BodyReadTaskRunsTaskRunsFilterPost(
        sort=models.TaskRunSort.ID_DESC,
        limit=1,
        offset=1,
        task_runs=models.TaskRunFilter(
            id=models.TaskRunFilterId(any_=[run.id for run in runs]),
            tags=models.TaskRunFilterTags(all_=["pick"]),
        ),
    )

    found = operation.sync_detailed(client=session.client, body=body)
    everything = operation.sync_detailed(
        client=session.client, body=models.BodyReadTaskRunsTaskRunsFilterPost()
    )

    assert found.status_code == 200
    assert [run.id for run in found.parsed] == [runs[0].id]
    assert isinstance(found.parsed[0], models.TaskRun)
    assert everything.status_code == 200
    assert len(everything.parsed) >= 3


def count_task_runs(operation: Any, session: Session) -> None:
    runs = tagged_runs(session, "to-count")
    models = session.models
    body = models.BodyCountTaskRunsTaskRunsCountPost(
        task_runs=models.TaskRunFilter(
            id=models.TaskRunFilterId(any_=[run.id for run in runs]),
            tags=models.TaskRunFilterTags(is_null=False),
        )
    )

    assert operation.sync(client=session.client, body=body) == 2


def paginate_task_runs(operation: Any, session: Session) -> None:
    runs = tagged_runs(session, "to-paginate")
    models = session.models
    body = models.BodyPaginateTaskRunsTaskRunsPaginatePost(
        sort=models.TaskRunSort.ID_DESC,
        limit=2,
        page=2,
        task_runs=models.TaskRunFilter(id=models.TaskRunFilterId(any_=[run.id for run in runs])),
    )

    page = operation.sync(client=session.client, body=body)

    assert isinstance(page, models.TaskRunPaginationResponse)
    assert (page.count, page.limit, page.pages, page.page) == (3, 2, 2, 2)
    assert [run.id for run in page.results] == [runs[0].id]


def task_run_history(operation: Any, session: Session) -> None:
    runs = tagged_runs(session, "to-chart")
    models = session.models
    start = min(run.expected_start_time for run in runs)
    body = models.BodyTaskRunHistoryTaskRunsHistoryPost(
        history_start=start,
        history_end=start + timedelta(hours=1),
        history_interval_seconds=3600,
        task_runs=models.TaskRunFilter(id=models.TaskRunFilterId(any_=[run.id for run in runs])),
    )

    (interval,) = operation.sync(client=session.client, body=body)

    assert isinstance(interval, models.HistoryResponse)
    assert interval.interval_start == start
    (state,) = interval.states
    assert (state.state_type, state.count_runs) == (models.StateType.PENDING, 3)


def bulk_increment_active_slots_with_lease(operation: Any, session: Session) -> None:
    models = session.models
    body = models.BodyBulkIncrementActiveSlotsWithLeaseV2ConcurrencyLimitsIncrementWithLeasePost(
        names=["tag:etl"], slots=1
    )

    granted = operation.sync(client=session.client, body=body)

    assert isinstance(granted, models.ConcurrencyLimitWithLeaseResponse)
    assert granted.limits == []


def bulk_decrement_active_slots_with_lease(operation: Any, session: Session) -> None:
    models = session.models
    body = models.BodyBulkDecrementActiveSlotsWithLeaseV2ConcurrencyLimitsDecrementWithLeasePost(
        lease_id=uuid.uuid4()
    )

    assert operation.sync_detailed(client=session.client, body=body).status_code == 204


EXERCISES: dict[str, Callable[[Any, Session], None]] = {
    "create_task_run_task_runs__post": create_task_run,
    "read_task_run_task_runs__id__get": read_task_run,
    "set_task_run_state_task_runs__id__set_state_post": set_task_run_state,
    "update_task_run_task_runs__id__patch": update_task_run,
    "delete_task_run_task_runs__id__delete": delete_task_run,
    "read_task_run_states_task_run_states__get": read_task_run_states,
    "read_task_run_state_task_run_states__id__get": read_task_run_state,
    "health_check_health_get": health_check,
    "perform_readiness_check_ready_get": perform_readiness_check,
    "server_version_version_get": server_version,
    "hello_hello_get": hello,
    "create_csrf_token_csrf_token_get": create_csrf_token,
    "read_server_version_admin_version_get": read_server_version,
    "read_task_runs_task_runs_filter_post": read_task_runs,
    "count_task_runs_task_runs_count_post": count_task_runs,
    "paginate_task_runs_task_runs_paginate_post": paginate_task_runs,
    "task_run_history_task_runs_history_post": task_run_history,
    "bulk_increment_active_slots_with_lease_v2_concurrency_limits_increment_with_lease_post": (
        bulk_increment_active_slots_with_lease
    ),
    "bulk_decrement_active_slots_with_lease_v2_concurrency_limits_decrement_with_lease_post": (
        bulk_decrement_active_slots_with_lease
    ),
}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The client generated from openapi.yaml, talking to a server over a fresh database."""
    output = tmp_path_factory.mktemp("client")
    generate_client(spec=SPEC_PATH, output=output)
    sys.path.insert(0, str(output))
    try:
        package = importlib.import_module(PACKAGE)
        importlib.import_module(f"{PACKAGE}.api")
        with (
            sqlite_database(output) as url,
            running_server(url, workers=1) as server,
        ):
            generated = Session(package=package, client=None)

            def record(request: httpx.Request) -> None:
                generated.sent.append((request.method, request.url.path))

            generated.client = package.Client(
                base_url=server.api_url, httpx_args={"event_hooks": {"request": [record]}}
            )
            with generated.client:
                yield generated
    finally:
        sys.path.remove(str(output))
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


@pytest.mark.parametrize(
    "operation", document_operations(), ids=lambda operation: operation.operation_id
)
def test_the_generated_client_calls(operation: Operation, session: Session) -> None:
    exercise = EXERCISES.get(operation.operation_id)
    if exercise is None:
        pytest.fail(
            f"openapi.yaml has the operation {operation.operation_id} "
            f"({operation.method.upper()} {operation.path}), which no exercise calls through "
            "the generated client: add one to EXERCISES in tests/client/test_generated_client.py"
        )
    already_sent = len(session.sent)

    exercise(session.operation(operation.operation_id), session)

    own = [request for request in session.sent[already_sent:] if operation.matches(*request)]
    assert own, f"the exercise of {operation.operation_id} sent no request of that operation"


def test_every_exercise_is_of_an_operation_of_the_document() -> None:
    documented = {operation.operation_id for operation in document_operations()}

    assert set(EXERCISES) <= documented, set(EXERCISES) - documented


def test_make_client_writes_into_a_git_ignored_folder() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", str(DEFAULT_OUTPUT / PACKAGE / "client.py")],
        cwd=REPOSITORY,
        check=False,
    )
    assert ignored.returncode == 0

"""Prefect's own Python client (prefect-client, async and sync) against the service.

The service runs as a real process on each database backend; the client reaches it only through
PREFECT_API_URL, so no ephemeral Prefect server is involved. Every test runs once with the
async client (`async with get_client()`) and once with the sync one
(`get_client(sync_client=True)`), both driven through `ClientCalls`. Each class covers one group
of the client's methods; a method the service gains is added to `ClientCalls`, its two
implementations and a class of its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

import httpx
import pytest
from packaging.version import Version
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
    TaskRunFilterTags,
)
from prefect.client.schemas.objects import State, StateDetails, StateType, TaskRun
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import TaskRunSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    get_current_settings,
    temporary_settings,
)
from prefect.states import Completed, Failed, Running

# `prefect.task` and `prefect.Task` are these same objects, but taking them from `prefect`
# imports prefect.main, which reconfigures logging (a handler on the root logger, the uvicorn
# loggers' handlers replaced) for the whole pytest process, every other test included.
from prefect.tasks import Task, task

from tests.support.databases import empty_database
from tests.support.server import RunningServer, running_server

ClientKind = Literal["async", "sync"]
CREDENTIALS = "admin:secret"
# Recomputed by the server at every read, so a read differs from the create's answer.
COMPUTED_AT_READ = {"estimated_run_time", "estimated_start_time_delta"}
CSRF_DISABLED = "CSRF protection is disabled."


def add_one(number: int) -> int:
    return number + 1


def add_two_with_retries(number: int) -> int:
    return number + 2


def add_three_retried_once(number: int) -> int:
    return number + 3


PLAIN_TASK = task(add_one)
RETRIED_ONCE_TASK = Task(fn=add_three_retried_once, retries=1, retry_delay_seconds=0)
RETRIED_TASK = Task(
    fn=add_two_with_retries, tags=["compat", "retried"], retries=2, retry_delay_seconds=[1, 5]
)


# --- What the client sent and received ---------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One request the client sent and the answer it got, recorded by an httpx event hook."""

    method: str
    path: str
    query: dict[str, list[str]]
    request_headers: httpx.Headers
    request_body: bytes
    status: int
    response_text: str

    @classmethod
    def of(cls, response: httpx.Response) -> Exchange:
        request = response.request
        return cls(
            method=request.method,
            path=request.url.path,
            query=parse_qs(request.url.query.decode()),
            request_headers=request.headers,
            request_body=request.content,
            status=response.status_code,
            response_text=response.text,
        )


# --- The client methods under test, the same calls for both clients ------------------------


class ClientCalls(Protocol):
    """The methods of Prefect's client under test, called synchronously whichever the client."""

    exchanges: list[Exchange]

    @property
    def api_url(self) -> str: ...

    def client_version(self) -> str: ...

    def api_healthcheck(self) -> Exception | None: ...

    def hello(self) -> httpx.Response: ...

    def api_version(self) -> str: ...

    def raise_for_api_version_mismatch(self) -> None: ...

    def create_task_run(
        self,
        task: Task[..., Any],
        flow_run_id: uuid.UUID | None,
        dynamic_key: str,
        *,
        extra_tags: Iterable[str] | None = None,
    ) -> TaskRun: ...

    def read_task_run(self, task_run_id: uuid.UUID) -> TaskRun: ...

    def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State[Any], force: bool = False
    ) -> OrchestrationResult[Any]: ...

    def read_task_run_states(self, task_run_id: uuid.UUID) -> list[State[Any]]: ...

    def set_task_run_name(self, task_run_id: uuid.UUID, name: str) -> httpx.Response: ...

    def delete_task_run(self, task_run_id: uuid.UUID) -> None: ...

    def read_task_runs(
        self,
        *,
        flow_filter: FlowFilter | None = None,
        flow_run_filter: FlowRunFilter | None = None,
        task_run_filter: TaskRunFilter | None = None,
        sort: TaskRunSort | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TaskRun]: ...


class SyncCalls:
    """`SyncPrefectClient`'s methods, as they are."""

    def __init__(self, client: SyncPrefectClient, exchanges: list[Exchange]) -> None:
        self._client = client
        self.exchanges = exchanges

    @property
    def api_url(self) -> str:
        return str(self._client.api_url)

    def client_version(self) -> str:
        return self._client.client_version()

    def api_healthcheck(self) -> Exception | None:
        return self._client.api_healthcheck()

    def hello(self) -> httpx.Response:
        return self._client.hello()

    def api_version(self) -> str:
        return self._client.api_version()

    def raise_for_api_version_mismatch(self) -> None:
        self._client.raise_for_api_version_mismatch()

    def create_task_run(
        self,
        task: Task[..., Any],
        flow_run_id: uuid.UUID | None,
        dynamic_key: str,
        *,
        extra_tags: Iterable[str] | None = None,
    ) -> TaskRun:
        return self._client.create_task_run(task, flow_run_id, dynamic_key, extra_tags=extra_tags)

    def read_task_run(self, task_run_id: uuid.UUID) -> TaskRun:
        return self._client.read_task_run(task_run_id)

    def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State[Any], force: bool = False
    ) -> OrchestrationResult[Any]:
        return self._client.set_task_run_state(task_run_id, state, force=force)

    def read_task_run_states(self, task_run_id: uuid.UUID) -> list[State[Any]]:
        return self._client.read_task_run_states(task_run_id)

    def set_task_run_name(self, task_run_id: uuid.UUID, name: str) -> httpx.Response:
        return self._client.set_task_run_name(task_run_id, name)

    def delete_task_run(self, task_run_id: uuid.UUID) -> None:
        self._client.delete_task_run(task_run_id)

    def read_task_runs(
        self,
        *,
        flow_filter: FlowFilter | None = None,
        flow_run_filter: FlowRunFilter | None = None,
        task_run_filter: TaskRunFilter | None = None,
        sort: TaskRunSort | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TaskRun]:
        return self._client.read_task_runs(
            flow_filter=flow_filter,
            flow_run_filter=flow_run_filter,
            task_run_filter=task_run_filter,
            sort=sort,
            limit=limit,
            offset=offset,
        )


class AsyncCalls:
    """`PrefectClient`'s coroutines, each awaited on the one event loop the client was opened on."""

    def __init__(
        self, client: PrefectClient, runner: asyncio.Runner, exchanges: list[Exchange]
    ) -> None:
        self._client = client
        self._runner = runner
        self.exchanges = exchanges

    @property
    def api_url(self) -> str:
        return str(self._client.api_url)

    def client_version(self) -> str:
        return self._client.client_version()

    def api_healthcheck(self) -> Exception | None:
        return self._runner.run(self._client.api_healthcheck())

    def hello(self) -> httpx.Response:
        return self._runner.run(self._client.hello())

    def api_version(self) -> str:
        return self._runner.run(self._client.api_version())

    def raise_for_api_version_mismatch(self) -> None:
        self._runner.run(self._client.raise_for_api_version_mismatch())

    def create_task_run(
        self,
        task: Task[..., Any],
        flow_run_id: uuid.UUID | None,
        dynamic_key: str,
        *,
        extra_tags: Iterable[str] | None = None,
    ) -> TaskRun:
        return self._runner.run(
            self._client.create_task_run(task, flow_run_id, dynamic_key, extra_tags=extra_tags)
        )

    def read_task_run(self, task_run_id: uuid.UUID) -> TaskRun:
        return self._runner.run(self._client.read_task_run(task_run_id))

    def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State[Any], force: bool = False
    ) -> OrchestrationResult[Any]:
        return self._runner.run(self._client.set_task_run_state(task_run_id, state, force=force))

    def read_task_run_states(self, task_run_id: uuid.UUID) -> list[State[Any]]:
        return self._runner.run(self._client.read_task_run_states(task_run_id))

    def set_task_run_name(self, task_run_id: uuid.UUID, name: str) -> httpx.Response:
        return self._runner.run(self._client.set_task_run_name(task_run_id, name))

    def delete_task_run(self, task_run_id: uuid.UUID) -> None:
        self._runner.run(self._client.delete_task_run(task_run_id))

    def read_task_runs(
        self,
        *,
        flow_filter: FlowFilter | None = None,
        flow_run_filter: FlowRunFilter | None = None,
        task_run_filter: TaskRunFilter | None = None,
        sort: TaskRunSort | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TaskRun]:
        return self._runner.run(
            self._client.read_task_runs(
                flow_filter=flow_filter,
                flow_run_filter=flow_run_filter,
                task_run_filter=task_run_filter,
                sort=sort,
                limit=limit,
                offset=offset,
            )
        )


@contextmanager
def prefect_client(
    server: RunningServer, kind: ClientKind, *, auth_string: str | None = None
) -> Iterator[ClientCalls]:
    """Prefect's client of `kind`, as `get_client()` builds it for PREFECT_API_URL=<server>/api.

    Settings a developer's environment might carry are pinned: no API key, no ephemeral
    server, CSRF support on (Prefect's default), and `auth_string` as PREFECT_API_AUTH_STRING.
    """
    exchanges: list[Exchange] = []
    settings = {
        PREFECT_API_URL: server.api_url,
        PREFECT_API_AUTH_STRING: auth_string,
        PREFECT_API_KEY: None,
        PREFECT_SERVER_EPHEMERAL_ENABLED: False,
        PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: True,
    }
    with temporary_settings(updates=settings):
        if kind == "sync":

            def record(response: httpx.Response) -> None:
                response.read()
                exchanges.append(Exchange.of(response))

            hooks = {"event_hooks": {"response": [record]}}
            with get_client(httpx_settings=hooks, sync_client=True) as sync_client:
                yield SyncCalls(sync_client, exchanges)
            return

        async def record_async(response: httpx.Response) -> None:
            await response.aread()
            exchanges.append(Exchange.of(response))

        async_hooks = {"event_hooks": {"response": [record_async]}}
        # One event loop for the client's whole life: opened (`async with`, through the exit
        # stack), used by each call, closed, all on the loop of this runner.
        with asyncio.Runner() as runner:
            stack = AsyncExitStack()
            async_client = runner.run(
                stack.enter_async_context(get_client(httpx_settings=async_hooks))
            )
            try:
                yield AsyncCalls(async_client, runner, exchanges)
            finally:
                runner.run(stack.aclose())


# --- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The service as a process of its own over an empty database of `backend`."""
    with (
        empty_database(backend, tmp_path_factory.mktemp("compat")) as url,
        running_server(url, workers=1) as server,
    ):
        yield server


@pytest.fixture(scope="module")
def served_with_auth(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The service requiring HTTP Basic credentials, set the way Prefect's server reads them."""
    with (
        empty_database(backend, tmp_path_factory.mktemp("compat-auth")) as url,
        running_server(
            url, workers=1, environment={"PREFECT_SERVER_API_AUTH_STRING": CREDENTIALS}
        ) as server,
    ):
        yield server


@pytest.fixture(params=["async", "sync"])
def client_kind(request: pytest.FixtureRequest) -> ClientKind:
    kind: ClientKind = request.param
    return kind


@pytest.fixture
def prefect(served: RunningServer, client_kind: ClientKind) -> Iterator[ClientCalls]:
    """Prefect's client of `client_kind`, pointed at `served`."""
    with prefect_client(served, client_kind) as calls:
        yield calls


# --- Helpers ----------------------------------------------------------------------------------


def unique_key() -> str:
    """A dynamic key no other test uses: the runs of all tests share one server."""
    return uuid.uuid4().hex


def as_instants(value: Any) -> Any:
    """`value` with every datetime in UTC, so that equal instants compare equal."""
    if isinstance(value, datetime):
        assert value.tzinfo is not None, f"naive datetime {value!r}"
        return value.astimezone(UTC)
    if isinstance(value, dict):
        return {key: as_instants(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_instants(item) for item in value]
    return value


def comparable(task_run: TaskRun) -> dict[str, Any]:
    """Every field of `task_run` but those computed at read time, datetimes as instants."""
    dumped: dict[str, Any] = as_instants(task_run.model_dump(exclude=COMPUTED_AT_READ))
    return dumped


def assert_reads_back(calls: ClientCalls, created: TaskRun) -> None:
    """`read_task_run` answers what `create_task_run` returned."""
    read = calls.read_task_run(created.id)
    assert isinstance(read, TaskRun)
    assert comparable(read) == comparable(created)


def requests_made(calls: ClientCalls) -> list[tuple[str, str]]:
    return [(exchange.method, exchange.path) for exchange in calls.exchanges]


# --- Tests ------------------------------------------------------------------------------------


class TestClientSetUp:
    """The premise of this module: the client reaches the served API and nothing else."""

    def test_the_client_uses_the_served_api_and_a_private_home(
        self, prefect: ClientCalls, served: RunningServer
    ) -> None:
        assert prefect.api_url.rstrip("/") == served.api_url
        home = get_current_settings().home
        assert home == Path(os.environ["PREFECT_HOME"])
        assert home != Path("~/.prefect").expanduser()


class TestStartUp:
    """What the client asks before its work: health, hello, versions, a CSRF token."""

    def test_api_healthcheck_finds_the_api_healthy(self, prefect: ClientCalls) -> None:
        # The client returns the exception it met instead of raising it.
        assert prefect.api_healthcheck() is None
        assert requests_made(prefect) == [("GET", "/api/health")]
        assert prefect.exchanges[0].status == 200

    def test_hello(self, prefect: ClientCalls) -> None:
        response = prefect.hello()

        assert response.status_code == 200
        assert response.json() == "👋"
        assert requests_made(prefect) == [("GET", "/api/hello")]

    def test_the_server_version_check_passes(self, prefect: ClientCalls) -> None:
        # Raises RuntimeError when the server's major version differs from the client's.
        prefect.raise_for_api_version_mismatch()

        served = prefect.api_version()
        assert isinstance(served, str), served
        client = Version(prefect.client_version())
        assert Version(served).major == client.major == 3
        # An older server is accepted with a warning only; this one is not older.
        assert Version(served) >= client
        assert requests_made(prefect) == [("GET", "/api/admin/version")] * 2

    def test_the_csrf_token_fetch_before_the_first_change_lets_it_through(
        self, prefect: ClientCalls
    ) -> None:
        prefect.create_task_run(PLAIN_TASK, None, unique_key())
        prefect.create_task_run(PLAIN_TASK, None, unique_key())

        # Asked once, before the first POST: the answer switched CSRF off for this client.
        assert requests_made(prefect) == [
            ("GET", "/api/csrf-token"),
            ("POST", "/api/task_runs/"),
            ("POST", "/api/task_runs/"),
        ]
        token_fetch, *creates = prefect.exchanges
        (client_id,) = token_fetch.query["client"]
        uuid.UUID(client_id)
        # The only two answers the client reads as "no CSRF protection here".
        assert token_fetch.status == 404 or (
            token_fetch.status == 422 and CSRF_DISABLED in token_fetch.response_text
        ), (token_fetch.status, token_fetch.response_text)
        for create in creates:
            assert create.status == 201
            assert "prefect-csrf-token" not in create.request_headers


class TestCreateTaskRun:
    """`create_task_run`."""

    @pytest.mark.parametrize("with_flow_run", [True, False], ids=["flow-run", "no-flow-run"])
    def test_creates_a_pending_run_of_the_task(
        self, prefect: ClientCalls, with_flow_run: bool
    ) -> None:
        flow_run_id = uuid.uuid4() if with_flow_run else None
        dynamic_key = unique_key()

        created = prefect.create_task_run(
            RETRIED_TASK, flow_run_id, dynamic_key, extra_tags=["extra"]
        )

        assert isinstance(created, TaskRun)
        assert created.task_key == RETRIED_TASK.task_key
        assert created.task_key.startswith("add_two_with_retries-")
        assert created.dynamic_key == dynamic_key
        assert created.flow_run_id == flow_run_id
        assert sorted(created.tags) == ["compat", "extra", "retried"]
        assert created.empirical_policy.retries == 2
        assert created.empirical_policy.retry_delay == [1, 5]
        assert created.state_type == StateType.PENDING
        assert created.state is not None
        assert created.state.type == StateType.PENDING
        assert created.name
        assert_reads_back(prefect, created)

    def test_a_task_made_from_a_plain_function(self, prefect: ClientCalls) -> None:
        created = prefect.create_task_run(PLAIN_TASK, None, unique_key())

        assert created.task_key == PLAIN_TASK.task_key
        assert created.task_key.startswith("add_one-")
        assert created.flow_run_id is None
        assert created.tags == []
        assert created.empirical_policy.retries == 0
        assert created.state_type == StateType.PENDING
        assert_reads_back(prefect, created)

    @pytest.mark.parametrize("with_flow_run", [True, False], ids=["flow-run", "no-flow-run"])
    def test_the_same_key_again_returns_the_same_run(
        self, prefect: ClientCalls, with_flow_run: bool
    ) -> None:
        flow_run_id = uuid.uuid4() if with_flow_run else None
        dynamic_key = unique_key()

        first = prefect.create_task_run(RETRIED_TASK, flow_run_id, dynamic_key)
        again = prefect.create_task_run(RETRIED_TASK, flow_run_id, dynamic_key)
        other = prefect.create_task_run(RETRIED_TASK, flow_run_id, unique_key())

        assert again.id == first.id
        assert comparable(again) == comparable(first)
        assert other.id != first.id
        statuses = [exchange.status for exchange in prefect.exchanges if exchange.method == "POST"]
        assert statuses == [201, 200, 201]


class TestReadTaskRun:
    """`read_task_run`."""

    def test_reads_a_created_run(self, prefect: ClientCalls) -> None:
        created = prefect.create_task_run(RETRIED_TASK, uuid.uuid4(), unique_key())

        assert_reads_back(prefect, created)

    def test_an_unknown_id_raises_object_not_found(self, prefect: ClientCalls) -> None:
        unknown = uuid.uuid4()

        with pytest.raises(ObjectNotFound) as raised:
            prefect.read_task_run(unknown)

        assert isinstance(raised.value.http_exc, httpx.HTTPStatusError)
        assert raised.value.http_exc.response.status_code == 404
        assert requests_made(prefect) == [("GET", f"/api/task_runs/{unknown}")]


class TestReadTaskRuns:
    """`read_task_runs` with a TaskRunFilter, a sort, a limit and an offset."""

    def test_filters_sorts_and_pages(self, prefect: ClientCalls) -> None:
        flow_run_id = uuid.uuid4()
        runs = [
            prefect.create_task_run(RETRIED_TASK, flow_run_id, unique_key(), extra_tags=tags)
            for tags in (["pick"], ["pick"], ["other"], ["pick"])
        ]
        prefect.create_task_run(RETRIED_TASK, None, unique_key(), extra_tags=["pick"])
        for run in runs[:3]:
            prefect.set_task_run_state(run.id, Running())
            prefect.set_task_run_state(run.id, Completed())
        task_run_filter = TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED])),
            tags=TaskRunFilterTags(all_=["pick", "compat"]),
        )
        # The two completed runs tagged "pick" in the flow run; ends ordered as they completed.
        expected = [runs[1].id, runs[0].id]

        found = prefect.read_task_runs(
            task_run_filter=task_run_filter, sort=TaskRunSort.END_TIME_DESC
        )
        first = prefect.read_task_runs(
            task_run_filter=task_run_filter, sort=TaskRunSort.END_TIME_DESC, limit=1
        )
        second = prefect.read_task_runs(
            task_run_filter=task_run_filter, sort=TaskRunSort.END_TIME_DESC, limit=1, offset=1
        )

        assert [run.id for run in found] == expected
        assert all(isinstance(run, TaskRun) for run in found)
        assert all(run.state_type == StateType.COMPLETED for run in found)
        assert [run.id for run in first + second] == expected
        assert comparable(found[0]) == comparable(prefect.read_task_run(expected[0]))

    def test_the_whole_flow_run_by_id(self, prefect: ClientCalls) -> None:
        flow_run_id = uuid.uuid4()
        runs = [prefect.create_task_run(PLAIN_TASK, flow_run_id, unique_key()) for _ in range(3)]

        found = prefect.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )

        assert [run.id for run in found] == [run.id for run in runs]
        assert prefect.exchanges[-1].path == "/api/task_runs/filter"

    def test_by_flow_run_filter_with_an_unset_flow_filter(self, prefect: ClientCalls) -> None:
        flow_run_id = uuid.uuid4()
        runs = [prefect.create_task_run(PLAIN_TASK, flow_run_id, unique_key()) for _ in range(2)]
        prefect.create_task_run(PLAIN_TASK, uuid.uuid4(), unique_key())

        # The client sends FlowFilter() with each of its criteria null.
        found = prefect.read_task_runs(
            flow_filter=FlowFilter(),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )

        assert [run.id for run in found] == [run.id for run in runs]


class TestLifecycle:
    """`set_task_run_state`, `read_task_run_states`, `set_task_run_name`, `delete_task_run`."""

    def test_a_run_fails_retries_and_completes(self, prefect: ClientCalls) -> None:
        run = prefect.create_task_run(RETRIED_ONCE_TASK, None, unique_key())

        running = prefect.set_task_run_state(run.id, Running())
        failed = prefect.set_task_run_state(run.id, Failed(message="boom"))
        retrying = prefect.set_task_run_state(run.id, Running())
        completed = prefect.set_task_run_state(run.id, Completed())

        assert isinstance(running, OrchestrationResult)
        assert running.status == SetStateStatus.ACCEPT
        assert failed.status == SetStateStatus.REJECT
        assert failed.details.reason == "Retrying"  # type: ignore[union-attr]
        assert failed.state is not None
        assert (failed.state.type, failed.state.name) == (StateType.SCHEDULED, "AwaitingRetry")
        assert failed.state.message == "boom"
        assert retrying.status == SetStateStatus.ACCEPT
        assert retrying.state is not None
        assert retrying.state.name == "Retrying"
        assert completed.status == SetStateStatus.ACCEPT
        read = prefect.read_task_run(run.id)
        assert (read.state_type, read.run_count) == (StateType.COMPLETED, 2)
        assert read.start_time is not None
        assert read.end_time is not None
        statuses = [e.status for e in prefect.exchanges if e.path.endswith("/set_state")]
        assert statuses == [201] * 4

        history = prefect.read_task_run_states(run.id)

        assert [(state.type, state.name) for state in history] == [
            (StateType.PENDING, "Pending"),
            (StateType.RUNNING, "Running"),
            (StateType.SCHEDULED, "AwaitingRetry"),
            (StateType.RUNNING, "Retrying"),
            (StateType.COMPLETED, "Completed"),
        ]
        assert history[-1].id == completed.state.id  # type: ignore[union-attr]

    def test_a_second_run_with_the_same_cache_key_gets_the_cached_result(
        self, prefect: ClientCalls
    ) -> None:
        cache_key = f"compat-{unique_key()}"
        first = prefect.create_task_run(PLAIN_TASK, None, unique_key())
        prefect.set_task_run_state(first.id, Running())
        prefect.set_task_run_state(
            first.id, Completed(state_details=StateDetails(cache_key=cache_key))
        )
        second = prefect.create_task_run(PLAIN_TASK, None, unique_key())

        result = prefect.set_task_run_state(
            second.id, Running(state_details=StateDetails(cache_key=cache_key))
        )

        assert result.status == SetStateStatus.REJECT
        assert result.details.reason == "Retrieved state from cache"  # type: ignore[union-attr]
        assert result.state is not None
        assert (result.state.type, result.state.name) == (StateType.COMPLETED, "Cached")
        assert prefect.read_task_run(second.id).state_type == StateType.COMPLETED

    def test_a_run_is_renamed(self, prefect: ClientCalls) -> None:
        run = prefect.create_task_run(PLAIN_TASK, None, unique_key())

        response = prefect.set_task_run_name(run.id, "renamed-by-prefect")

        assert response.status_code == 204
        assert prefect.read_task_run(run.id).name == "renamed-by-prefect"

    def test_a_deleted_run_is_not_found(self, prefect: ClientCalls) -> None:
        run = prefect.create_task_run(PLAIN_TASK, None, unique_key())

        prefect.delete_task_run(run.id)

        with pytest.raises(ObjectNotFound):
            prefect.read_task_run(run.id)
        with pytest.raises(ObjectNotFound):
            prefect.delete_task_run(run.id)
        assert prefect.read_task_run_states(run.id) == []


class TestAuthentication:
    """PREFECT_API_AUTH_STRING against a server started with PREFECT_SERVER_API_AUTH_STRING."""

    def test_the_right_credentials_create_and_read(
        self, served_with_auth: RunningServer, client_kind: ClientKind
    ) -> None:
        with prefect_client(served_with_auth, client_kind, auth_string=CREDENTIALS) as calls:
            created = calls.create_task_run(RETRIED_TASK, uuid.uuid4(), unique_key())

            assert_reads_back(calls, created)
            assert calls.api_healthcheck() is None

    @pytest.mark.parametrize("auth_string", [None, "admin:wrong"], ids=["none", "wrong"])
    def test_missing_or_wrong_credentials_get_401(
        self, served_with_auth: RunningServer, client_kind: ClientKind, auth_string: str | None
    ) -> None:
        with prefect_client(served_with_auth, client_kind, auth_string=CREDENTIALS) as calls:
            existing = calls.create_task_run(PLAIN_TASK, None, unique_key())

        with prefect_client(served_with_auth, client_kind, auth_string=auth_string) as calls:
            with pytest.raises(PrefectHTTPStatusError) as create_refused:
                calls.create_task_run(PLAIN_TASK, None, unique_key())
            with pytest.raises(PrefectHTTPStatusError) as read_refused:
                calls.read_task_run(existing.id)

        assert create_refused.value.response.status_code == 401
        assert read_refused.value.response.status_code == 401

    def test_the_health_check_needs_no_credentials(
        self, served_with_auth: RunningServer, client_kind: ClientKind
    ) -> None:
        with prefect_client(served_with_auth, client_kind) as calls:
            assert calls.api_healthcheck() is None
            assert [exchange.status for exchange in calls.exchanges] == [200]

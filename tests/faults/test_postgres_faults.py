"""PostgreSQL faults on a served database: lost connections, refused connections, held locks.

Only the test's own database is touched (its backends terminated, its connections refused,
its table locked); never the server's other databases.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.db.database import normalise_url
from tests.support.databases import postgres_database, postgres_server_url
from tests.support.faults import wait_for
from tests.support.server import RunningServer, running_server

pytestmark = pytest.mark.postgresql

SECRET = "secret-row-content-4b1e"
RECOVERY_SECONDS = 1.0


@pytest.fixture
def database_url() -> Iterator[str]:
    server_url = postgres_server_url()
    if server_url is None:
        pytest.skip("TEST_POSTGRES_URL is not set")
    with postgres_database(server_url) as url:
        yield url


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    """A connection to the server's maintenance database, for acting on the test's own."""
    engine = create_engine(normalise_url(str(postgres_server_url())), isolation_level="AUTOCOMMIT")
    yield engine
    with engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name_of(database_url)}" ALLOW_CONNECTIONS true'))
    engine.dispose()


def name_of(database_url: str) -> str:
    name = make_url(database_url).database
    assert name is not None
    assert name.startswith("taskrun_test_")  # the test's own database, never another
    return name


def terminate_backends(admin: Engine, database_url: str) -> int:
    with admin.connect() as connection:
        terminated = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name_of(database_url)},
        ).scalar_one()
    return int(terminated)


def allow_connections(admin: Engine, database_url: str, *, allowed: bool) -> None:
    with admin.connect() as connection:
        connection.execute(
            text(
                f'ALTER DATABASE "{name_of(database_url)}" ALLOW_CONNECTIONS {str(allowed).lower()}'
            )
        )


def create(client: httpx.Client) -> httpx.Response:
    body: dict[str, Any] = {"task_key": f"{SECRET}-{uuid.uuid4().hex}", "dynamic_key": "0"}
    return client.post("/task_runs/", json=body)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert "nothing was changed" in response.json()["detail"]


def assert_readable(client: httpx.Client, ids: list[str]) -> None:
    for run_id in ids:
        assert client.get(f"/task_runs/{run_id}").status_code == 200, run_id


def warm(client: httpx.Client, *, requests: int = 20) -> list[str]:
    """Creates spread over the workers, so that each has pooled connections to lose."""
    return [create(client).json()["id"] for _ in range(requests)]


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    """The service on the test's database, and a client opening a connection per request
    (so that requests reach both workers).
    """
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with (
        running_server(database_url, log_path=tmp_path / "server.log") as server,
        httpx.Client(base_url=server.api_url, timeout=30, limits=no_reuse) as client,
    ):
        yield server, client


class TestTerminatedConnections:
    def test_answers_stay_2xx_or_503_and_recover_within_a_second(
        self, database_url: str, admin: Engine, served: tuple[RunningServer, httpx.Client]
    ) -> None:
        server, client = served
        acknowledged = warm(client)
        assert terminate_backends(admin, database_url) > 0
        terminated_at = time.monotonic()
        answers: list[tuple[float, httpx.Response]] = []
        while time.monotonic() - terminated_at < 3:
            answers.append((time.monotonic() - terminated_at, create(client)))
        acknowledged += [r.json()["id"] for _, r in answers if r.status_code == 201]
        assert_readable(client, acknowledged)

        for _, response in answers:
            if response.status_code != 201:
                assert_unavailable(response)
        refused = [index for index, (_, r) in enumerate(answers) if r.status_code != 201]
        recovered = answers[refused[-1] + 1 if refused else 0]
        assert recovered[1].status_code == 201
        assert recovered[0] < RECOVERY_SECONDS
        assert SECRET not in server.log()


class TestRefusedConnections:
    def test_503_while_the_database_refuses_connections_then_recovered(
        self, database_url: str, admin: Engine, served: tuple[RunningServer, httpx.Client]
    ) -> None:
        server, client = served
        acknowledged = warm(client)
        allow_connections(admin, database_url, allowed=False)
        terminate_backends(admin, database_url)
        try:
            during = [create(client) for _ in range(10)]
            reads_during = [client.get(f"/task_runs/{acknowledged[0]}") for _ in range(5)]
        finally:
            allow_connections(admin, database_url, allowed=True)
        allowed_at = time.monotonic()
        assert wait_for(lambda: create(client).status_code == 201, timeout=5)
        recovered_after = time.monotonic() - allowed_at
        after = [create(client) for _ in range(10)]
        assert_readable(client, acknowledged + [r.json()["id"] for r in after])

        for response in during + reads_during:
            assert_unavailable(response)
        assert recovered_after < RECOVERY_SECONDS
        assert [response.status_code for response in after] == [201] * 10
        assert SECRET not in server.log()


class TestTimeouts:
    @pytest.mark.parametrize(
        ("environment", "named"),
        [
            (
                {"DATABASE_LOCK_TIMEOUT": "1", "DATABASE_STATEMENT_TIMEOUT": "30"},
                "SQLSTATE 55P03",  # lock_not_available
            ),
            (
                {"DATABASE_LOCK_TIMEOUT": "30", "DATABASE_STATEMENT_TIMEOUT": "1"},
                "SQLSTATE 57014",  # query_canceled
            ),
        ],
        ids=["lock-timeout", "statement-timeout"],
    )
    def test_a_held_table_lock_is_503_after_the_timeout(
        self,
        database_url: str,
        tmp_path: Path,
        environment: dict[str, str],
        named: str,
    ) -> None:
        with (
            running_server(
                database_url, environment=environment, log_path=tmp_path / "server.log"
            ) as server,
            httpx.Client(base_url=server.api_url, timeout=30) as client,
        ):
            acknowledged = warm(client, requests=3)
            holding, release = threading.Event(), threading.Event()
            holder = threading.Thread(target=hold_table_lock, args=(database_url, holding, release))
            holder.start()
            assert holding.wait(timeout=10)
            try:
                started = time.monotonic()
                write = create(client)
                read = client.get(f"/task_runs/{acknowledged[0]}")
                waited = time.monotonic() - started
            finally:
                release.set()
                holder.join()
            after = create(client)

        assert_unavailable(write)
        assert_unavailable(read)
        assert 1.8 <= waited < 6  # two requests, each stopped after about a second
        assert after.status_code == 201
        assert named in server.log()


def hold_table_lock(database_url: str, holding: threading.Event, release: threading.Event) -> None:
    """Lock task_run against everyone, from another session, until `release` is set."""
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("LOCK TABLE task_run IN ACCESS EXCLUSIVE MODE"))
            holding.set()
            release.wait(timeout=30)
    finally:
        engine.dispose()


def set_read_only(admin: Engine, database_url: str, *, read_only: bool) -> None:
    """New transactions of the database read-only, as on a standby the service was pointed
    at; its open connections are ended so that the workers' next ones take the setting.
    """
    with admin.connect() as connection:
        connection.execute(
            text(
                f'ALTER DATABASE "{name_of(database_url)}"'
                f" SET default_transaction_read_only = {str(read_only).lower()}"
            )
        )
    terminate_backends(admin, database_url)


class TestReadOnlyDatabase:
    def test_writes_are_503_reads_200_and_writes_recover(
        self, database_url: str, admin: Engine, served: tuple[RunningServer, httpx.Client]
    ) -> None:
        server, client = served
        acknowledged = warm(client)
        set_read_only(admin, database_url, read_only=True)
        try:
            assert wait_for(lambda: create(client).status_code != 201, timeout=5)
            during = [create(client) for _ in range(10)]
            reads_during = [client.get(f"/task_runs/{run_id}") for run_id in acknowledged[:5]]
        finally:
            set_read_only(admin, database_url, read_only=False)
        assert wait_for(lambda: create(client).status_code == 201, timeout=5)

        for response in during:
            assert_unavailable(response)
        assert [response.status_code for response in reads_during] == [200] * 5
        assert "SQLSTATE 25006" in server.log()
        assert SECRET not in server.log()


class TestProbesWhileTheDatabaseIsSlow:
    def test_health_and_version_answer_at_once_while_every_read_thread_waits(
        self, database_url: str, tmp_path: Path
    ) -> None:
        environment = {"READ_THREADS_PER_WORKER": "1", "DATABASE_LOCK_TIMEOUT": "30"}
        with (
            running_server(
                database_url, workers=1, environment=environment, log_path=tmp_path / "log"
            ) as server,
            httpx.Client(base_url=server.api_url, timeout=60) as client,
            httpx.Client(base_url=server.api_url, timeout=60) as waiting_client,
        ):
            run_id = create(client).json()["id"]
            holding, release = threading.Event(), threading.Event()
            holder = threading.Thread(target=hold_table_lock, args=(database_url, holding, release))
            holder.start()
            assert holding.wait(timeout=10)
            read = threading.Thread(target=waiting_client.get, args=(f"/task_runs/{run_id}",))
            try:
                read.start()
                time.sleep(0.5)  # the one read thread now waits for the lock
                started = time.monotonic()
                health = client.get("/health")
                version = client.get("/version")
                answered_after = time.monotonic() - started
            finally:
                release.set()
                holder.join()
                read.join()

        assert (health.status_code, health.json()) == (200, True)
        assert version.status_code == 200
        assert answered_after < 1.0

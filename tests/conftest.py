"""Fixtures: every database test runs on SQLite and, when TEST_POSTGRES_URL is set, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connexion import FlaskApp
from starlette.testclient import TestClient

from app.db.database import Database
from app.db.migrate import upgrade
from app.db.tables import event, task_run
from app.main import create_app, database_of
from app.settings import Settings
from tests.support.databases import POSTGRES_ENV, empty_database, postgres_server_url

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database kind under test."""
    name: str = request.param
    if name == "postgresql" and postgres_server_url() is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    return name


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of the backend under test, shared by the session's tests."""
    with empty_database(backend, tmp_path_factory.mktemp(backend)) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def app(database_url: str) -> Iterator[FlaskApp]:
    """The service, with responses checked against openapi.yaml."""
    application = create_app(Settings(database_url=database_url, validate_responses=True))
    yield application
    database_of(application).dispose()


@pytest.fixture
def database(app: FlaskApp) -> Database:
    """The app's database, emptied before the test."""
    db = database_of(app)
    with db.transaction() as connection:
        # The states, cache entries and deliveries go with their runs.
        connection.execute(task_run.delete())
        connection.execute(event.delete())
    return db


@pytest.fixture
def client(app: FlaskApp, database: Database) -> Iterator[TestClient]:
    """An HTTP client for the app, over an empty database."""
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture
def spec_path() -> Path:
    """The contract."""
    return Path(__file__).resolve().parents[1] / "openapi.yaml"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many requests Schemathesis sent, by operation and status; the screenshots taken."""
    # Imported only now: only the modules that ran have filled them.
    from tests.browser.test_docs_page import SCREENSHOTS  # noqa: PLC0415
    from tests.contract.test_schemathesis import TALLY  # noqa: PLC0415

    if TALLY:
        terminalreporter.section("Schemathesis requests")
        for line, count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{count:6d}  {line}")
        terminalreporter.write_line(f"{sum(TALLY.values()):6d}  in all")
    if SCREENSHOTS:
        terminalreporter.section("Screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))

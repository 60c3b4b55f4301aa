"""Test databases: a fresh SQLite file, or a throw-away database on a PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.db.database import Database, normalise_url
from app.services.task_runs import create_task_run
from generated import models

POSTGRES_ENV = "TEST_POSTGRES_URL"


def postgres_server_url() -> str | None:
    """The PostgreSQL server the tests may use (any database on it), from TEST_POSTGRES_URL."""
    return os.environ.get(POSTGRES_ENV) or None


@contextmanager
def sqlite_database(directory: Path) -> Iterator[str]:
    """The URL of a new SQLite file in `directory`."""
    yield f"sqlite:///{directory / f'taskrun-{uuid.uuid4().hex[:8]}.db'}"


@contextmanager
def postgres_database(server_url: str, *, options: str = "") -> Iterator[str]:
    """Create a uniquely named database on the server, yield its URL, then drop it.

    `options` follow the name in CREATE DATABASE (a template, a locale).
    """
    name = f"taskrun_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" {options}'.rstrip()))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def empty_database(backend: str, directory: Path) -> Iterator[str]:
    """The URL of a new, empty database of `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        with sqlite_database(directory) as url:
            yield url
        return
    server_url = postgres_server_url()
    if server_url is None:
        raise RuntimeError(f"set {POSTGRES_ENV} to run the PostgreSQL tests")
    with postgres_database(server_url) as url:
        yield url


def created_run(database: Database, **fields: object) -> models.TaskRun:
    """A run created through the service (task key "k", dynamic key "0" unless given), as
    its create answered.
    """
    body = models.TaskRunCreate.model_validate({"task_key": "k", "dynamic_key": "0", **fields})
    outcome = database.write(
        lambda connection: create_task_run(connection=connection, task_run=body)
    )
    return outcome.task_run


def record_writes(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """From now on, each write asked of `database` appends to the list returned whether it
    was asked as one statement (`Database.write(..., one_statement=...)`).
    """
    asked: list[bool] = []
    write = database.write

    def recorded_write(work: Any, *, one_statement: bool = False) -> Any:
        asked.append(one_statement)
        return write(work, one_statement=one_statement)

    monkeypatch.setattr(database, "write", recorded_write)
    return asked

"""Alembic environment: migrates the database named by the caller or by DATABASE_URL."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from app.db.database import normalise_url, sqlite_file
from app.db.tables import (
    DECLARED_POSTGRESQL_ONLY_INDEXES,
    POSTGRESQL_ONLY_INDEXES,
    SQLITE_ONLY_INDEXES,
    metadata,
)
from app.settings import Settings

config = context.config


def _database_url() -> str:
    url: str | None = config.attributes.get("database_url")
    return url or Settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=True,
        include_object=_compared_on(connection.dialect.name),
    )


def _compared_on(dialect: str) -> Callable[..., bool]:
    """Whether the schema comparison looks at an object: not at the indexes one database has
    alone (most of PostgreSQL's are not in the tables; the ones that are, and SQLite's, the
    other database does not have).
    """
    not_compared = set(POSTGRESQL_ONLY_INDEXES)
    if dialect == "sqlite":
        not_compared |= DECLARED_POSTGRESQL_ONLY_INDEXES
    else:
        not_compared |= SQLITE_ONLY_INDEXES

    def compared(item: Any, name: str | None, kind: str, reflected: bool, compared_to: Any) -> bool:  # noqa: ARG001
        return not (kind == "index" and name in not_compared)

    return compared


# The key of PostgreSQL's advisory lock that one migrating process holds at a time.
MIGRATION_LOCK_KEY = 0x7461736B72756E  # "taskrun" in ASCII


def run_migrations() -> None:
    """Apply (or compare) the migrations over one connection, one process at a time."""
    engine = create_engine(normalise_url(_database_url()), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection, _one_migration_at_a_time(connection):
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


@contextmanager
def _one_migration_at_a_time(connection: Connection) -> Iterator[None]:
    """Wait until no other process migrates the database, and keep the others waiting.

    Replicas that start together would each read the same revision and apply the same
    migration; all but one would fail halfway. The lock goes with the connection (a
    PostgreSQL session's advisory lock) or with the process (a file lock beside an SQLite
    file), also when a migration fails.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()  # the lock outlives the transaction; Alembic begins its own
        yield
        return
    database = sqlite_file(connection.engine.url)
    if database is None:
        yield
        return
    with open(f"{database}-migrate.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations()

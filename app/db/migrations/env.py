"""Alembic environment: migrates the database named by the caller or by DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from app.db.database import normalise_url
from app.db.tables import metadata
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
    )


def run_migrations() -> None:
    """Apply (or compare) the migrations over one connection."""
    engine = create_engine(normalise_url(_database_url()), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations()

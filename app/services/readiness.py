"""Readiness: whether the service can serve requests right now."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from app.db import migrate
from app.db.database import Database, DatabaseUnavailable
from app.services.errors import NotReady

READY = "OK"
DATABASE_NOT_AVAILABLE = "Database is not available"


def check_readiness(*, database: Database, schema_head: str) -> str:
    """`READY` when the database answers and its schema is at `schema_head`.

    :raises NotReady: naming what is missing.
    """
    try:
        with database.snapshot() as connection:
            current = migrate.current_revisions(connection)
    except (DatabaseUnavailable, SQLAlchemyError) as error:
        raise NotReady(DATABASE_NOT_AVAILABLE) from error
    if current != (schema_head,):
        at = ", ".join(current) or "no revision"
        raise NotReady(
            f"Database schema is at {at}, not at {schema_head}: run `taskrun-api db upgrade`"
        )
    return READY

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
    if current == (schema_head,):
        return READY
    at = ", ".join(current) or "no revision"
    if not all(migrate.is_known_revision(revision) for revision in current):
        # An upgrade cannot help: this service's migrations end before that revision.
        raise NotReady(
            f"Database schema is at {at}, a revision this service does not know (a newer"
            " version migrated it): run that version, or one newer"
        )
    raise NotReady(
        f"Database schema is at {at}, not at {schema_head}: run `taskrun-api db upgrade`"
    )

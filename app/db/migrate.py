"""Schema migrations (Alembic), applied by `taskrun-api db upgrade` and on `taskrun-api serve`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, column, inspect, select, table

from app.db.database import use_wal

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for `database_url`, needing no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database's schema up to `revision` (an SQLite file ends up in WAL mode)."""
    command.upgrade(alembic_config(database_url), revision)
    use_wal(database_url)


def downgrade(database_url: str, revision: str) -> None:
    """Take the database's schema back to `revision` ("base": no tables at all)."""
    command.downgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the tables in app/db/tables.py differ from what the migrations create."""
    command.check(alembic_config(database_url))


@cache
def head_revision() -> str:
    """The newest migration of app/db/migrations (the schema this code expects)."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError("app/db/migrations has no migration")
    return head


def is_known_revision(revision: str) -> bool:
    """Whether app/db/migrations has the migration `revision`."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


# Alembic's own table of the revisions applied.
_VERSION_TABLE = table("alembic_version", column("version_num"))


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The migrations the database's schema is at (none for an empty database).

    Read from Alembic's table directly: Alembic's MigrationContext logs two lines each time
    it is made, and the readiness check asks this on every probe.
    """
    if not inspect(connection).has_table(_VERSION_TABLE.name):
        return ()
    return tuple(connection.execute(select(_VERSION_TABLE.c.version_num)).scalars())

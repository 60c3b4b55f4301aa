"""Statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.tables import Base


def table_of(row: Base) -> Table:
    """The table an ORM object is stored in."""
    return cast(Table, row.__table__)


def column_values(row: Base) -> dict[str, object]:
    """The column values of an ORM object, keyed by attribute name."""
    return {column.key: getattr(row, column.key) for column in table_of(row).columns}


def insert_unless_conflicting(session: Session, row: Base) -> bool:
    """INSERT the row unless it collides with a unique key; return whether it was inserted.

    One statement, and the database decides: no select-then-insert race is possible.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = table_of(row)
    statement = (
        insert(table)
        .values(column_values(row))
        .on_conflict_do_nothing()
        .returning(*table.primary_key.columns)
    )
    return session.execute(statement).first() is not None


def insert_row(session: Session, row: Base) -> None:
    """INSERT the row without registering it in the session (no unit-of-work overhead)."""
    session.execute(table_of(row).insert().values(column_values(row)))

"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, ColumnElement, DateTime, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

# What SQLite's text of a UTC instant needs to be read as one in a single parse.
_UTC_OFFSET = "+00:00"
# SQLAlchemy's text of a datetime on SQLite (its DATETIME storage format), which sorts and
# compares as the instants do.
_SQLITE_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL keeps the instant in `timestamptz`; SQLite has no time zones, so the value is
    stored as naive UTC text and UTC is attached again when it is read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = _utc(value)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, the instant written straight as SQLAlchemy's text of it; elsewhere
        process_bind_param, then the driver's conversion.
        """
        if dialect.name == "sqlite":
            return _sqlite_text_of
        return super().bind_processor(dialect)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        assert isinstance(value, datetime)
        return _as_utc(value)

    def result_processor(
        self, dialect: Dialect, coltype: Any
    ) -> Callable[[Any], datetime | None] | None:
        """On SQLite, the stored text read straight into an aware datetime; elsewhere the
        driver's datetime through process_result_value.

        Attaching UTC to a parsed naive value (`replace(tzinfo=...)`) costs several times the
        parse itself, and a list of runs reads about eight instants per run.
        """
        if dialect.name == "sqlite":
            return _utc_from_sqlite_text
        return super().result_processor(dialect, coltype)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given for a UTC column")
    return value.astimezone(UTC)


def _sqlite_text_of(value: datetime | None) -> str | None:
    """The text SQLite stores for an instant: naive UTC, to the microsecond."""
    if value is None:
        return None
    utc = _utc(value)
    return _SQLITE_TEXT % (
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_from_sqlite_text(value: str | None) -> datetime | None:
    """The instant SQLite stores as naive UTC text ("2026-12-06 07:15:09.123456")."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value + _UTC_OFFSET)
    except ValueError:
        # Text this service did not write, naming an offset of its own: read as it says.
        return _as_utc(datetime.fromisoformat(value))


class _TextConvertedOnSQLite(TypeDecorator[str]):
    """Text as the database returns it, converted by `from_sqlite` on SQLite."""

    impl = Text
    cache_ok = True

    def __init__(self, from_sqlite: Callable[[Any], str | None]) -> None:
        super().__init__()
        self.from_sqlite = from_sqlite

    def result_processor(
        self,
        dialect: Dialect,
        coltype: Any,  # noqa: ARG002
    ) -> Callable[[Any], Any] | None:
        return self.from_sqlite if dialect.name == "sqlite" else None


def _canonical_uuid_from_sqlite_text(value: str | None) -> str | None:
    """The canonical text ("8-4-4-4-12", lowercase) of a UUID SQLite stores as 32 hex digits."""
    if value is None:
        return None
    if len(value) == 32 and value.islower():
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    # Text this service did not write (upper case, dashes, or digits only).
    return str(UUID(value))


def _json_text_from_sqlite(value: str | bytes | float | None) -> str | None:
    """The JSON text of a value SQLite returned for a JSON column: stored as text, as a BLOB
    (JSONKeepingNumbers), or, written before that type existed, as a number.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    return json.dumps(value)


class JSONKeepingNumbers(TypeDecorator[Any]):
    """JSON whose every document reads back as it was written, on SQLite too.

    A column declared JSON has NUMERIC affinity on SQLite: the text of a document that is a
    bare number is stored as an INTEGER or a REAL instead, which keeps about 15 significant
    digits, and no integer beyond 64 bits. Such a document is bound as a BLOB, which affinity
    leaves as it is; every other document as its text, as SQLAlchemy's JSON binds it. The
    column stays declared JSON, so no table is rebuilt. Documents written as numbers before
    read back as the numbers they became.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def bind(value: Any) -> str | bytes | None:
            if value is None:
                return None
            text = json.dumps(value)
            return text.encode() if text[0] in _NUMBER_STARTS else text

        return bind

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def result(value: str | bytes | float | None) -> Any:
            if value is None or isinstance(value, int | float):
                return value
            return json.loads(value)

        return result


# The first character of a JSON number's text.
_NUMBER_STARTS = frozenset("-0123456789")


class _AsText(FunctionElement[str]):
    """A column read as its text, cast on PostgreSQL (SQLite stores it as text already)."""

    inherit_cache = True


@compiles(_AsText, "sqlite")
def _as_text_sqlite(element: _AsText, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(next(iter(element.clauses)), **kw)


@compiles(_AsText, "postgresql")
def _as_text_postgresql(element: _AsText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(next(iter(element.clauses)), **kw)} AS TEXT)"


class _UUIDAsText(_AsText):
    type = _TextConvertedOnSQLite(_canonical_uuid_from_sqlite_text)
    inherit_cache = True


class _JSONAsText(_AsText):
    type = _TextConvertedOnSQLite(_json_text_from_sqlite)
    inherit_cache = True


def uuid_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    """A Uuid column read as its canonical text ("8-4-4-4-12", lowercase): what a JSON answer
    carries, without building a UUID object to print it again.
    """
    return _UUIDAsText(column)


def json_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    """A JSON column read as the JSON text stored, without decoding it."""
    return _JSONAsText(column)

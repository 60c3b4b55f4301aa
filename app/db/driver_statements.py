"""The busiest statements, compiled once per database and run on the driver's own cursor.

For a small statement, SQLAlchemy's execution (an execution context, the events, a result
object) costs several times what the database spends on it: on SQLite a read of a run by
its id takes about 60 µs through `Connection.execute` and 10 µs on the cursor. Reads and
proposals run such statements on every request, the writes of a proposal while every other
writer waits for its turn (README, "How fast, and where the time goes").

A `DriverStatement` is built by SQLAlchemy as usual and compiled by it, once per dialect;
each execution then runs the SQL on the cursor of the connection's transaction, with the
parameters and columns converted by the very type processors SQLAlchemy applies. A driver
error is raised as the SQLAlchemy error `Connection.execute` would raise, so the service's
fault handling (503 for an unavailable database) sees no difference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import ReturnsRows
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any]


@dataclass(slots=True)
class _Compiled:
    """A statement as one dialect runs it."""

    sql: str
    # The parameters in the order of the placeholders (positional styles), else None.
    positions: tuple[str, ...] | None
    # Parameter name -> its type's processor; names without one are passed as they are.
    bind_processors: dict[str, Processor]
    # Values of the statement's own literals, added to every execution's parameters.
    fixed: dict[str, Any]
    # The type of each column of the rows the statement returns.
    result_types: tuple[TypeEngine[Any], ...]
    # One processor (or None) per column, once the first row told the columns' driver types.
    result_processors: tuple[Processor | None, ...] | None = None

    def driver_parameters(self, parameters: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The parameters converted for the driver, in its placeholders' style."""
        values = {**self.fixed, **parameters}
        for name, processor in self.bind_processors.items():
            value = values[name]
            if value is not None:
                values[name] = processor(value)
        if self.positions is None:
            return values
        return [values[name] for name in self.positions]


class DriverStatement:
    """A statement executed on the driver's cursor of a connection's transaction."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def execute(self, connection: Connection, parameters: Mapping[str, Any]) -> int:
        """Run the statement; the number of rows it changed."""
        with self._cursor(connection, parameters) as (cursor, _compiled):
            return int(cursor.rowcount)

    def execute_many(
        self, connection: Connection, parameter_sets: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run the statement once for each set of parameters, in one call of the driver."""
        with self._cursor(connection, parameter_sets, many=True):
            pass

    def first(
        self, connection: Connection, parameters: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """Run the statement; its first row, its columns converted, or None."""
        with self._cursor(connection, parameters) as (cursor, compiled):
            row = cursor.fetchone()
            if row is None:
                return None
            processors = compiled.result_processors
            if processors is None:
                processors = self._result_processors(connection.dialect, compiled, cursor)
        return tuple(
            value if processor is None or value is None else processor(value)
            for processor, value in zip(processors, row, strict=True)
        )

    @contextmanager
    def _cursor(
        self,
        connection: Connection,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        many: bool = False,
    ) -> Iterator[tuple[Any, _Compiled]]:
        """A cursor that ran the statement (once per set of `parameters` when `many`),
        closed after the block; a driver error in the statement or the block is raised as
        SQLAlchemy's.
        """
        dialect = connection.dialect
        compiled = self._for(dialect)
        driver_parameters: Any
        if many:
            assert isinstance(parameters, Sequence)
            driver_parameters = [compiled.driver_parameters(each) for each in parameters]
        else:
            assert isinstance(parameters, Mapping)
            driver_parameters = compiled.driver_parameters(parameters)
        if not connection.in_transaction():
            # As `Connection.execute` would: the transaction is SQLAlchemy's to begin (on
            # SQLite, with the writer's turn) and to commit or roll back.
            connection.begin()
        driver = connection.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, driver_parameters)
            else:
                cursor.execute(compiled.sql, driver_parameters)
            yield cursor, compiled
        except dialect.loaded_dbapi.Error as error:
            raise DBAPIError.instance(
                compiled.sql,
                driver_parameters,
                error,
                dialect.loaded_dbapi.Error,
                hide_parameters=connection.engine.hide_parameters,
                dialect=dialect,
            ) from error
        finally:
            cursor.close()

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.setdefault(dialect.name, self._compile(dialect))
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        bind_processors: dict[str, Processor] = {}
        fixed: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            if bind.expanding or bind.literal_execute:
                # SQLAlchemy renders those into the SQL at each execution.
                raise ValueError(f"parameter {name!r} is rendered per execution: use execute()")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                bind_processors[name] = processor
            if not bind.required:
                fixed[name] = bind.effective_value
        # A query's columns, or those an INSERT or UPDATE returns (none without RETURNING).
        returned = (
            self.statement.exported_columns if isinstance(self.statement, ReturnsRows) else ()
        )
        positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        return _Compiled(
            sql=compiled.string,
            positions=positions,
            bind_processors=bind_processors,
            fixed=fixed,
            result_types=tuple(column.type for column in returned),
        )

    @staticmethod
    def _result_processors(
        dialect: Dialect, compiled: _Compiled, cursor: Any
    ) -> tuple[Processor | None, ...]:
        """The columns' processors; some depend on the driver's type of the column, which
        the description of the first result gives (as SQLAlchemy's results take it).
        """
        processors = tuple(
            column_type.dialect_impl(dialect).result_processor(dialect, column[1])
            for column_type, column in zip(compiled.result_types, cursor.description, strict=True)
        )
        compiled.result_processors = processors
        return processors

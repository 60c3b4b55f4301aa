"""Engine and connections: one connection per request, one transaction per write."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

from app.db.writer_lock import WriterLock, WriterLockTimeout

# How long a writer waits for SQLite's lock, and for a pooled connection, before giving up.
LOCK_TIMEOUT_SECONDS = 30

# Execution option of write transactions: the WriterLock that admits them (SQLite), or True.
_WRITE_OPTION = "taskrun_writer"
_HOLDS_WRITER_LOCK = "taskrun_holds_writer_lock"
# Connection info: what to call once the transaction has committed.
_AFTER_COMMIT = "taskrun_after_commit"

logger = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or stayed busy too long; nothing was changed."""


def normalise_url(url: str) -> URL:
    """Accept the usual `postgresql://` URLs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Database:
    """The database the service keeps its data in, SQLite or PostgreSQL."""

    def __init__(
        self, url: str, *, pool_size: int = 10, lock_timeout: float = LOCK_TIMEOUT_SECONDS
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.in_memory = self.is_sqlite and self.url.database in (None, "", ":memory:")
        self.engine = (
            self._sqlite_engine(pool_size) if self.is_sqlite else self._postgresql_engine(pool_size)
        )
        self._writer_lock = WriterLock(self._lock_path(), timeout=lock_timeout)
        writer: WriterLock | bool = self._writer_lock if self.is_sqlite else True
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: writer})
        self._read_engine = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    def _lock_path(self) -> Path | None:
        """The file SQLite writers of every process lock (none for a PostgreSQL or memory one)."""
        if not self.is_sqlite or self.in_memory:
            return None
        return Path(f"{self.url.database}-write.lock")

    def _sqlite_engine(self, pool_size: int) -> Engine:
        # An in-memory database lives in its one connection, which every thread must share.
        pooling: dict[str, Any] = (
            {"poolclass": StaticPool}
            if self.in_memory
            else {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": LOCK_TIMEOUT_SECONDS}
        )
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": LOCK_TIMEOUT_SECONDS},
            **pooling,
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
        return engine

    def _postgresql_engine(self, pool_size: int) -> Engine:
        return create_engine(
            self.url,
            connect_args={"options": "-c timezone=UTC", "connect_timeout": 10},
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=LOCK_TIMEOUT_SECONDS,
        )

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        On SQLite the transaction, and the writer's turn, start with its first statement, so
        that the work before it does not keep other writers waiting.
        """
        with _unavailable_on_connection_errors(), self._write_engine.connect() as connection:
            committed = False
            try:
                yield connection
                connection.commit()
                committed = True
            except BaseException:
                connection.rollback()
                raise
            finally:
                if connection.info.pop(_HOLDS_WRITER_LOCK, False):
                    self._writer_lock.release()
                callbacks = connection.info.pop(_AFTER_COMMIT, [])
            if committed:
                _call_all(callbacks)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection for reads; every statement sees the data committed when it starts."""
        with _unavailable_on_connection_errors(), self._read_engine.connect() as connection:
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        self._writer_lock.close()


def after_commit(connection: Connection, callback: Callable[[], None]) -> None:
    """Call `callback` once the transaction of `connection` has committed (not if it does not)."""
    connection.info.setdefault(_AFTER_COMMIT, []).append(callback)


def _call_all(callbacks: list[Callable[[], None]]) -> None:
    # What was written stays written: a failing callback is logged, not raised.
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("a callback after a commit failed")


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except PoolTimeoutError as error:
        raise DatabaseUnavailable("no database connection became free in time") from error
    except WriterLockTimeout as error:
        raise DatabaseUnavailable(str(error)) from error
    except (OperationalError, InterfaceError) as error:
        if not _means_unavailable(error):
            raise
        raise DatabaseUnavailable(str(error.orig)) from error


def _means_unavailable(error: OperationalError | InterfaceError) -> bool:
    """Whether the error says "try again later" rather than "this statement is wrong"."""
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    # SQLite reports a bad statement as an OperationalError too; only contention and an
    # unreachable file are worth a retry.
    message = str(error.orig).lower()
    return not isinstance(error.orig, sqlite3.Error) or any(
        reason in message for reason in ("locked", "busy", "unable to open", "disk i/o")
    )


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is switched off; `_begin_sqlite_transaction`
    # starts each transaction explicitly instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed write survives a power loss, not only a crash of the process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    # A writer waits for its turn, then takes SQLite's write lock up front, so it can never
    # fail half-way when upgrading a read lock. Readers run each statement on its own.
    writer = connection.get_execution_options().get(_WRITE_OPTION)
    if isinstance(writer, WriterLock):
        writer.acquire()
        connection.info[_HOLDS_WRITER_LOCK] = True
        connection.exec_driver_sql("BEGIN IMMEDIATE")

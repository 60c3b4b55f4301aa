"""Engine and connections: one connection per request, one transaction per write.

Faults of the database are DatabaseUnavailable (answered 503 with Retry-After): it cannot be
reached, refuses writes (disk full, files not writable), stayed locked longer than the lock
timeout or took longer than the statement timeout. A fault that may have spoiled connections
(a lost server, a file that was unwritable when a connection opened it) discards every
pooled connection, so the service is well again as soon as the fault ends.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

from app.db.group_commit import Batch, GroupCommit, WriteUnit
from app.db.writer_lock import WriterLock, WriterLockTimeout, WriterLockUnavailable
from app.observability.logs import log_failure

_Result = TypeVar("_Result")

# How long a writer waits for its turn (and a request for a pooled connection), and how long
# a PostgreSQL statement may run, unless the settings say otherwise (seconds).
LOCK_TIMEOUT_SECONDS = 10.0
STATEMENT_TIMEOUT_SECONDS = 30.0
# How long opening a PostgreSQL connection may take.
CONNECT_TIMEOUT_SECONDS = 10
# How long asking PostgreSQL to cancel a statement may take.
CANCEL_TIMEOUT_SECONDS = 2.0

# Execution option of write transactions: the WriterLock that admits them (SQLite), or True.
_WRITE_OPTION = "taskrun_writer"
# What to call once the current thread's write transaction has committed. Not kept on the
# connection: a fault can discard it, and whatever it held.
_AFTER_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "taskrun_after_commit", default=None
)

logger = logging.getLogger(__name__)

# SQLite result codes (the low byte of an extended one) that mean "try again later". The
# first two are contention; the others are faults of the file or the disk, after which a
# connection may stay unusable (one opened while the files were unwritable stays read-only).
_SQLITE_CONTENTION = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_FILE_FAULTS = frozenset(
    {
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


class DatabaseUnavailable(Exception):
    """The database cannot be reached, refuses writes or stayed busy too long; nothing was
    changed. `reason` names the fault without any of the request's data.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_url(url: str) -> URL:
    """Accept the usual `postgresql://` URLs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_in_memory_sqlite(url: str | URL) -> bool:
    """Whether `url` names an SQLite database that lives in memory, not in a file.

    Only SQLite's: a PostgreSQL URL without a database name is the user's database.
    """
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def sqlite_file(url: str | URL) -> str | None:
    """The file of the SQLite database `url` names; None for one in memory, or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or is_in_memory_sqlite(parsed):
        return None
    return parsed.database


class Database:
    """The database the service keeps its data in, SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
        statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.in_memory = is_in_memory_sqlite(self.url)
        self.lock_timeout = lock_timeout
        # SQLite maps its -shm file into memory: writing there after the file became
        # unwritable kills the process (SIGBUS) instead of failing, so it is checked first.
        self._shared_memory_file = (
            Path(f"{self.url.database}-shm") if self.is_sqlite and not self.in_memory else None
        )
        self.engine = (
            self._sqlite_engine(pool_size)
            if self.is_sqlite
            else self._postgresql_engine(pool_size, statement_timeout=statement_timeout)
        )
        event.listen(self.engine, "handle_error", _discard_connections_after_faults)
        self._writer_lock = WriterLock(self._lock_path(), timeout=lock_timeout)
        writer: WriterLock | bool = self._writer_lock if self.is_sqlite else True
        # PostgreSQL's writes of one statement: it commits with it, no BEGIN or COMMIT sent.
        self._one_statement_engine = self.engine.execution_options(**{_WRITE_OPTION: writer})
        # PostgreSQL's connections are in autocommit unless a write transaction asks for one:
        # reads and writes of one statement, the most frequent, then change nothing on the
        # connection they take from the pool (the change and its reset on return cost about
        # 0.15 M instructions, 6 % of a read's).
        self._write_engine = (
            self._one_statement_engine
            if self.is_sqlite
            else self._one_statement_engine.execution_options(isolation_level="READ COMMITTED")
        )
        self._read_engine = self.engine
        # SQLite: a BEGIN on a read connection; PostgreSQL: one snapshot per transaction.
        self._consistent_read_engine = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="REPEATABLE READ")
        )
        self._group_commit = GroupCommit(self._commit_batch)
        # The PostgreSQL connections of one-statement writes under way: their statement
        # commits by itself, even after the process that sent it is gone.
        self._one_statement_writes: set[Any] = set()

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
            else {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": self.lock_timeout}
        )
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": self.lock_timeout},
            # Errors must not carry a request's data into the logs.
            hide_parameters=True,
            **pooling,
        )
        event.listen(engine, "connect", self._open_sqlite_connection)
        event.listen(engine, "begin", self._begin_sqlite_transaction)
        return engine

    def _postgresql_engine(self, pool_size: int, *, statement_timeout: float) -> Engine:
        options = (
            "-c timezone=UTC"
            f" -c statement_timeout={_milliseconds(statement_timeout)}"
            f" -c lock_timeout={_milliseconds(self.lock_timeout)}"
        )
        return create_engine(
            self.url,
            connect_args={"options": options, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=self.lock_timeout,
            isolation_level="AUTOCOMMIT",
        )

    @contextmanager
    def transaction(self, *, one_statement: bool = False) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        On SQLite the transaction, and the writer's turn, start with its first statement, so
        that the work before it does not keep other writers waiting. `one_statement`: the
        block changes data by one statement at most, which on PostgreSQL is then its own
        transaction (no BEGIN and COMMIT round trips); reads around it see committed data.
        """
        self._refuse_unwritable_shared_memory()
        callbacks: list[Callable[[], None]] = []
        reset_token = _AFTER_COMMIT.set(callbacks)
        commits_by_itself = one_statement and self.autocommits_one_statement_writes
        engine = self._one_statement_engine if commits_by_itself else self._write_engine
        try:
            with (
                self._committed(engine) as connection,
                self._cancellable(connection) if commits_by_itself else nullcontext(),
            ):
                yield connection
        finally:
            _AFTER_COMMIT.reset(reset_token)
        _call_all(callbacks)

    @property
    def autocommits_one_statement_writes(self) -> bool:
        """Whether a write of one statement runs without a transaction around it, its statement
        committed by itself (PostgreSQL; SQLite's writes are committed in groups).
        """
        return not self.is_sqlite

    @contextmanager
    def _cancellable(self, connection: Connection) -> Iterator[None]:
        """Let `cancel_one_statement_writes` reach the connection's statement meanwhile."""
        driver = connection.connection.driver_connection
        self._one_statement_writes.add(driver)
        try:
            yield
        finally:
            self._one_statement_writes.discard(driver)

    def cancel_one_statement_writes(self) -> int:
        """Ask PostgreSQL to cancel the statement of every one-statement write under way;
        how many were asked. For a process that ends without waiting for its requests: a
        transaction is rolled back once its client is gone, but such a statement would go on
        and commit (a create waiting for a lock, say) after its client was answered 500.
        """
        writes = list(self._one_statement_writes)
        for driver in writes:
            try:
                driver.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
            except Exception as error:  # the process is ending: say so and go on
                logger.error("could not cancel a statement: %s", type(error).__name__)
        return len(writes)

    @contextmanager
    def _committed(self, engine: Engine | None = None) -> Iterator[Connection]:
        """A write connection (of `engine`, by default the write engine) whose transaction
        is committed if the block ends normally and rolled back if it raises; the writer's
        turn ends either way.
        """
        engine = engine or self._write_engine
        with _unavailable_on_connection_errors(), engine.connect() as connection:
            try:
                yield connection
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
            finally:
                # Not a flag on the connection: a fault can discard it, and its flags with it.
                self._writer_lock.release_if_held()

    def write(
        self, work: Callable[[Connection], _Result], *, one_statement: bool = False
    ) -> _Result:
        """Run `work` in a write transaction and return its result once committed.

        On SQLite the writes of this process that wait for their turn at the same time are
        committed together (app/db/group_commit.py); `work` then runs in another thread, in
        a copy of this thread's context, and must not start another write. An exception it
        raises undoes its own changes only, and is raised here.

        `one_statement`: `work` changes data by one statement at most; on PostgreSQL that
        statement is then its own transaction (see `transaction`).
        """
        if not self.is_sqlite:
            with self.transaction(one_statement=one_statement) as connection:
                return work(connection)
        callbacks: list[Callable[[], None]] = []

        def work_with_callbacks(connection: Connection) -> _Result:
            # Set in the unit's own copy of the context: no reset needed.
            _AFTER_COMMIT.set(callbacks)
            return work(connection)

        result = self._group_commit.write(work_with_callbacks)
        _call_all(callbacks)
        return result

    @property
    def queued_writes(self) -> int:
        """How many writes of this process wait for the next group commit (SQLite)."""
        return self._group_commit.queued

    def _commit_batch(self, batch: Batch) -> None:
        """Wait for the writer's turn, then run each unit queued by then in a savepoint of one
        transaction, and commit it (SQLite).

        The turn is awaited until the lock timeout of the unit that has waited longest: no
        request waits longer than the timeout in all, in the queue included. The units are
        taken once the turn is this thread's, so that those queued while it waited are
        committed with the others.
        """
        self._refuse_unwritable_shared_memory()
        deadline = batch.oldest_queued_at + self.lock_timeout
        with self._writer_lock.deadline(deadline), self._committed() as connection:
            # The transaction, and the writer's turn, begin before any unit runs.
            connection.begin()
            units = batch.take()
            if len(units) == 1:
                # Alone in its transaction: if it fails, the rollback undoes it.
                _run_alone(units[0], connection)
            else:
                for unit in units:
                    _run_in_savepoint(connection, unit)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection for reads; every statement sees the data committed when it starts."""
        with _unavailable_on_connection_errors(), self._read_engine.connect() as connection:
            # Looked at once the connection is this reader's: it may have waited for one.
            self._refuse_unwritable_shared_memory()
            yield connection

    @contextmanager
    def consistent_snapshot(self) -> Iterator[Connection]:
        """A connection for reads whose statements all see the data committed when the first
        one started: a read transaction (REPEATABLE READ on PostgreSQL), never committed.
        """
        with (
            _unavailable_on_connection_errors(),
            self._consistent_read_engine.connect() as connection,
        ):
            self._refuse_unwritable_shared_memory()
            if self.is_sqlite:
                # The driver leaves transactions to the service (isolation_level None).
                connection.exec_driver_sql("BEGIN")
            try:
                yield connection
            finally:
                if self.is_sqlite:
                    # A no-op when a fault already ended the transaction.
                    driver = connection.connection.driver_connection
                    assert driver is not None
                    driver.rollback()
                else:
                    connection.rollback()

    def _open_sqlite_connection(self, dbapi_connection: Any, _record: Any) -> None:
        # A new connection reads the database at once (its journal mode), so the files are
        # looked at first, as before any other read. Closed before it has read anything, it
        # leaves the shared memory alone.
        try:
            self._refuse_unwritable_shared_memory()
        except DatabaseUnavailable:
            dbapi_connection.close()
            raise
        _configure_sqlite_connection(dbapi_connection)

    def _begin_sqlite_transaction(self, connection: Connection) -> None:
        # A writer waits for its turn, then takes SQLite's write lock up front, so it can
        # never fail half-way when upgrading a read lock. Readers run each statement on its
        # own. The files are looked at again once the turn has come: the wait can last up to
        # the lock timeout, long enough for them to become unwritable meanwhile.
        writer = connection.get_execution_options().get(_WRITE_OPTION)
        if isinstance(writer, WriterLock):
            writer.acquire()
            self._refuse_unwritable_shared_memory()
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _refuse_unwritable_shared_memory(self) -> None:
        """Fail before SQLite touches a -shm file that can no longer be written.

        Every transaction writes to that file through memory, readers too; once it is
        immutable or on a file system remounted read-only, such a write is a SIGBUS that
        kills the worker with every request it serves. One `access` call beforehand (a
        microsecond) turns that into a 503: before a transaction, once a reader has its
        connection, when a connection is opened and once a writer's turn has come, so that
        no wait (for the writer's turn or a free connection) lies between the look and the
        write. A fault that begins in the microseconds between them cannot be caught this way.
        """
        path = self._shared_memory_file
        if path is not None and not os.access(path, os.W_OK) and _exists_unwritable(path):
            raise DatabaseUnavailable("the database files cannot be written")

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        self._writer_lock.close()


def after_commit(callback: Callable[[], None]) -> None:
    """Call `callback` once the current write transaction has committed (not if it does not).

    :raises RuntimeError: there is no write transaction here (`transaction()` or `write()`).
    """
    callbacks = _AFTER_COMMIT.get()
    if callbacks is None:
        raise RuntimeError("after_commit outside a write transaction")
    callbacks.append(callback)


def attempt_in_savepoint(connection: Connection, work: Callable[[], None]) -> DBAPIError | None:
    """Do `work` in a savepoint of the connection's transaction. A statement of it that the
    database refuses (a constraint, a value it cannot store) undoes the savepoint alone and
    is returned; a fault of the database itself (lost connection, timeout) is raised.
    """
    try:
        with connection.begin_nested():
            work()
    except DBAPIError as error:
        if _means_unavailable(error):
            raise
        return error
    return None


def _run_alone(unit: WriteUnit[Any], connection: Connection) -> None:
    unit.run(connection)
    if unit.error is not None:
        raise unit.error


def _run_in_savepoint(connection: Connection, unit: WriteUnit[Any]) -> None:
    """Run `unit`; undo its changes if it raised. A fault of the database, rather than of
    the unit's statements, is raised: the transaction cannot go on.

    The savepoint is SQLite's own, on the driver's connection: SQLAlchemy's nested
    transactions cost more than the statements of a small unit.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    with _savepoint_faults_unavailable():
        driver.execute("SAVEPOINT unit")
    unit.run(connection)
    if isinstance(unit.error, DBAPIError) and _means_unavailable(unit.error):
        raise unit.error
    with _savepoint_faults_unavailable():
        if unit.error is not None:
            driver.execute("ROLLBACK TO unit")
        driver.execute("RELEASE unit")


@contextmanager
def _savepoint_faults_unavailable() -> Iterator[None]:
    # SQLite ends the whole transaction after some faults; then the savepoint is gone too.
    try:
        yield
    except sqlite3.Error as error:
        raise DatabaseUnavailable(f"the transaction ended: {type(error).__name__}") from error


def _call_all(callbacks: list[Callable[[], None]]) -> None:
    # What was written stays written: a failing callback is logged, not raised.
    for callback in callbacks:
        try:
            callback()
        except Exception as error:
            log_failure(
                logger, logging.ERROR, "a callback after a commit failed", error, with_stack=True
            )


def _exists_unwritable(path: Path) -> bool:
    """After `access` failed: whether `path` exists and cannot be written.

    `access` fails for a file that does not exist too (then nothing is mapped, and nothing
    can fault), and another worker may have created it since: it is looked at again.
    """
    return path.exists() and not os.access(path, os.W_OK)


def _milliseconds(seconds: float) -> int:
    return max(round(seconds * 1000), 1)


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except PoolTimeoutError as error:
        raise DatabaseUnavailable("no database connection became free in time") from error
    except (WriterLockTimeout, WriterLockUnavailable) as error:
        raise DatabaseUnavailable(str(error)) from error
    except DBAPIError as error:
        if not _means_unavailable(error):
            raise
        raise DatabaseUnavailable(_reason(error)) from error


# SQLSTATE class of "program limit exceeded" errors.
_POSTGRESQL_PROGRAM_LIMIT_CLASS = "54"
# read_only_sql_transaction: a write to a standby, or to a database an administrator made
# read-only; the driver reports it as an InternalError.
_POSTGRESQL_READ_ONLY = "25006"


def _means_unavailable(error: DBAPIError) -> bool:
    """Whether the error says "try again later" rather than "this statement is wrong"."""
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    code = _sqlite_code(error.orig)
    if code is not None:
        # SQLite reports a bad statement as an OperationalError too.
        return code in _SQLITE_CONTENTION or code in _SQLITE_FILE_FAULTS
    # PostgreSQL: lost or refused connections, timeouts, a full disk, an administrator's
    # command, a database that takes no writes; not constraint violations or bad
    # statements, nor a statement beyond one of its limits (class 54: a value too large
    # for an index entry, say), which the driver reports as an OperationalError too.
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    if sqlstate == _POSTGRESQL_READ_ONLY:
        return True
    return isinstance(error, OperationalError) and not sqlstate.startswith(
        _POSTGRESQL_PROGRAM_LIMIT_CLASS
    )


def _sqlite_code(error: BaseException | None) -> int | None:
    """The primary SQLite result code of a driver error (None for other databases)."""
    if isinstance(error, sqlite3.Error) and error.sqlite_errorcode is not None:
        return int(error.sqlite_errorcode) & 0xFF
    return None


def _reason(error: DBAPIError) -> str:
    """The fault by its code (SQLite's name, PostgreSQL's SQLSTATE), never by its message:
    messages can quote the rows and parameters of the request.
    """
    driver_error = error.orig
    kind = type(driver_error).__name__
    sqlite_name = getattr(driver_error, "sqlite_errorname", None)
    if sqlite_name:
        return f"{kind} {sqlite_name}"
    sqlstate = getattr(driver_error, "sqlstate", None)
    if sqlstate:
        return f"{kind} SQLSTATE {sqlstate}"
    return f"{kind}: no connection to the database"


def _discard_connections_after_faults(context: ExceptionContext) -> None:
    # SQLAlchemy treats a "disconnect" by discarding the connection and the pool's others.
    if _sqlite_code(context.original_exception) in _SQLITE_FILE_FAULTS:
        context.is_disconnect = True


def _configure_sqlite_connection(dbapi_connection: Any) -> None:
    # The driver's own transaction handling is switched off; `_begin_sqlite_transaction`
    # starts each transaction explicitly instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Set once, before the workers start (`use_wal`); changing it here would need every
        # other connection closed, and fail with "database is locked" otherwise.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed write survives a power loss, not only a crash of the process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def use_wal(url: str) -> None:
    """Put an SQLite file database in WAL mode, where it stays (no-op for others).

    Done once before the service's workers start: the first of them would otherwise switch a
    fresh file while the others are already reading it, and some requests would fail.
    """
    database_file = sqlite_file(url)
    if database_file is None:
        return
    connection = sqlite3.connect(database_file, timeout=LOCK_TIMEOUT_SECONDS)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()

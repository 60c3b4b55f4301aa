"""Signals that the commits of the service's other processes give too.

A transaction that enqueues a background run or stores an event says so on a channel, and
every other service process gives that channel's Signal once the transaction has committed:
a run created through one process reaches a worker subscribed to another at once, not at
that process's next poll. The polls stay, for the moments this does not work.

- PostgreSQL (processes on any number of machines): NOTIFY, which PostgreSQL delivers to
  every listening connection after the commit. Each process listens on one connection of
  its own, in a thread.
- SQLite (processes on one machine): a file per channel beside the database, whose
  modification time the committing process sets; each process looks at the files' times
  every few milliseconds, in a thread (a `stat` call each).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from app.db.database import after_commit, sqlite_file
from app.db.signals import Signal

logger = logging.getLogger(__name__)

# Names this process's PostgreSQL notifications, so that its listener skips them: the
# process gives its own signals itself, right after its commit.
PROCESS_TOKEN = uuid.uuid4().hex
# How long the PostgreSQL listener waits for notifications before it looks whether it
# should stop, and waits before connecting again after its connection failed.
STOP_CHECK_SECONDS = 1.0
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10
# After this long without a notification the listener asks the server for an answer, and
# gives up on the connection when none comes in PING_TIMEOUT_SECONDS: a network path that
# died without a word leaves a connection that is open and silent, listened on forever.
PING_AFTER_SECONDS = 15.0
PING_TIMEOUT_SECONDS = 5.0
# How often an SQLite process looks at the channels' files.
WATCH_SECONDS = 0.01

_NOTIFY = text("SELECT pg_notify(:channel, :token)")


def notify_other_processes(connection: Connection, channel: str) -> None:
    """Once the current write transaction has committed, give the signal of `channel` in
    every other service process.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY, {"channel": channel, "token": PROCESS_TOKEN})
        return
    database_file = sqlite_file(connection.engine.url)
    if database_file is not None:
        path = wake_file(database_file, channel)
        after_commit(lambda: _touch(path))


def wake_file(database_file: str, channel: str) -> Path:
    """The file whose modification time says that `channel` was notified (SQLite)."""
    return Path(f"{database_file}-{channel}.wake")


def _touch(path: Path) -> None:
    # An explicit time in nanoseconds: the file system's own clock may not move between
    # two commits that come close together.
    now = time.time_ns()
    try:
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            path.touch()
            os.utime(path, ns=(now, now))
    except OSError as error:
        # The other processes find the change at their next poll instead.
        logger.warning("could not notify the other processes through %s: %s", path, error)


class Listener(ABC):
    """Listens in a thread of its own from `start` until `stop`."""

    def __init__(self, signals: dict[str, Signal]) -> None:
        self._signals = signals
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; returns once the thread has ended (at most a few seconds)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_CHECK_SECONDS + CONNECT_TIMEOUT_SECONDS)

    @abstractmethod
    def _run(self) -> None:
        """Give the signals of the channels notified, until stopping."""

    def _give(self, channel: str) -> None:
        self._signals[channel].notify()


class PostgresListener(Listener):
    """Gives each channel's Signal when another process notifies on that channel."""

    def __init__(self, url: URL, signals: dict[str, Signal]) -> None:
        super().__init__(signals)
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as error:
                logger.warning(
                    "listening for other processes' commits failed (%s); polling until"
                    " connected again",
                    type(error).__name__,
                )
                self._stopping.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as connection:
            for channel in self._signals:
                connection.execute(f'LISTEN "{channel}"')
            # What was committed while nobody listened is looked for now.
            for channel in self._signals:
                self._give(channel)
            heard = time.monotonic()
            while not self._stopping.is_set():
                for notification in connection.notifies(timeout=STOP_CHECK_SECONDS):
                    heard = time.monotonic()
                    if notification.payload != PROCESS_TOKEN:
                        self._give(notification.channel)
                if time.monotonic() - heard >= PING_AFTER_SECONDS:
                    _ping(connection)
                    heard = time.monotonic()


def _ping(connection: psycopg.Connection[Any]) -> None:
    """A round trip to the server; when its answer does not come in PING_TIMEOUT_SECONDS,
    the connection's socket is shut down, which ends the wait with a psycopg error.
    """
    # A duplicate descriptor of the socket: it stays the same socket until closed here, even
    # if the connection's own descriptor is closed meanwhile.
    with socket.socket(fileno=os.dup(connection.fileno())) as duplicate:
        watchdog = threading.Timer(PING_TIMEOUT_SECONDS, _shut_down, args=(duplicate,))
        watchdog.start()
        try:
            connection.execute("SELECT 1")
        finally:
            watchdog.cancel()
            watchdog.join()


def _shut_down(connection_socket: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        connection_socket.shutdown(socket.SHUT_RDWR)


class WakeFileWatcher(Listener):
    """Gives each channel's Signal when the modification time of its file changes."""

    def __init__(self, database_file: str, signals: dict[str, Signal]) -> None:
        super().__init__(signals)
        self._files = {channel: wake_file(database_file, channel) for channel in signals}

    def _run(self) -> None:
        seen = {channel: _modified(path) for channel, path in self._files.items()}
        while not self._stopping.wait(WATCH_SECONDS):
            for channel, path in self._files.items():
                modified = _modified(path)
                if modified != seen[channel]:
                    seen[channel] = modified
                    self._give(channel)


def _modified(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def other_processes_listener(url: URL, signals: dict[str, Signal]) -> Listener | None:
    """What gives `signals` (by channel) when other processes notify; None for a database in
    memory, which no other process shares.
    """
    if url.get_backend_name() != "sqlite":
        return PostgresListener(url, signals)
    database_file = sqlite_file(url)
    if database_file is None:
        return None
    return WakeFileWatcher(database_file, signals)

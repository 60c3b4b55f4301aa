"""Signals that the commits of the service's other processes give too (PostgreSQL).

A transaction that enqueues a background run or stores an event says so on a channel with
NOTIFY, which PostgreSQL delivers to every listening connection once the transaction has
committed. Each service process listens on one connection of its own, in a thread, and gives
the matching Signal, so that a run created through one process reaches a worker subscribed
to another at once, not at that process's next poll. The polls stay, for the moments the
listening connection is down. SQLite has no such channel: its processes keep polling.
"""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from app.db.signals import Signal

logger = logging.getLogger(__name__)

# Names this process's notifications, so that its listener skips them: the process gives
# its own signals itself, right after its commit.
PROCESS_TOKEN = uuid.uuid4().hex
# How long the listener waits for notifications before it looks whether it should stop.
STOP_CHECK_SECONDS = 1.0
# How long it waits before connecting again after the connection failed.
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10

_NOTIFY = text("SELECT pg_notify(:channel, :token)")


def notify_other_processes(connection: Connection, channel: str) -> None:
    """Once the current transaction has committed, give the signal of `channel` in every
    other service process (PostgreSQL; nothing on SQLite).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY, {"channel": channel, "token": PROCESS_TOKEN})


class NotificationListener:
    """Gives each channel's Signal when another process notifies on that channel."""

    def __init__(self, url: URL, signals: dict[str, Signal]) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._signals = signals
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen in a thread of its own until `stop`."""
        self._thread = threading.Thread(
            target=self._listen_until_stopped, name="notifications", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; returns once the thread has ended (at most a few seconds)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_CHECK_SECONDS + CONNECT_TIMEOUT_SECONDS)

    def _listen_until_stopped(self) -> None:
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
            self._give_all()
            while not self._stopping.is_set():
                for notification in connection.notifies(timeout=STOP_CHECK_SECONDS):
                    if notification.payload != PROCESS_TOKEN:
                        self._signals[notification.channel].notify()

    def _give_all(self) -> None:
        for signal in self._signals.values():
            signal.notify()

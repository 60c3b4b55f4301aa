"""The PostgreSQL listener through a TCP proxy that can go silent, as a network path that
died without a word does: the connection stays open, and nothing crosses it any more.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.db import notifications
from app.db.notifications import PostgresListener
from app.db.signals import Signal
from tests.support.databases import postgres_server_url
from tests.support.faults import wait_for

pytestmark = pytest.mark.postgresql

CHANNEL = "test_channel"


class SilencingProxy:
    """Forwards TCP connections to `target`; `silence` makes the connections open so far
    drop what they carry from then on, in both directions, without closing them.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._silenced: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0

    def __enter__(self) -> SilencingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.close()
        with self._lock:
            for connection in self._sockets:
                connection.close()

    def silence(self) -> None:
        with self._lock:
            for silenced in self._silenced:
                silenced.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            silenced = threading.Event()
            with self._lock:
                self._silenced.append(silenced)
                self._sockets += [client, upstream]
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink, silenced), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, silenced: threading.Event) -> None:
    # Until either end closes, the proxy's own closing included.
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if not silenced.is_set():
                sink.sendall(data)


@pytest.fixture
def server_url() -> str:
    url = postgres_server_url()
    if url is None:
        pytest.skip("TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture
def proxy(server_url: str) -> Iterator[SilencingProxy]:
    url = make_url(server_url)
    with SilencingProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        yield proxy


def notify(server_url: str) -> None:
    conninfo = make_url(server_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("SELECT pg_notify(%s, 'another process')", (CHANNEL,))


def test_a_connection_gone_silent_is_replaced_and_notifications_arrive_again(
    server_url: str, proxy: SilencingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifications, "PING_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(notifications, "PING_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(notifications, "RECONNECT_SECONDS", 0.1)
    signal = Signal()
    listener = PostgresListener(make_url(server_url).set(port=proxy.port), {CHANNEL: signal})
    listener.start()
    try:
        # Connected and listening: the first look for what was committed meanwhile.
        assert wait_for(lambda: signal.generation == 1, timeout=10)
        proxy.silence()
        time.sleep(0.2)
        notify(server_url)  # lost on the silent connection

        assert wait_for(lambda: proxy.connections == 2, timeout=10)
        # The new connection looks for what was missed, then hears notifications again.
        assert wait_for(lambda: signal.generation == 2, timeout=10)
        notify(server_url)
        assert wait_for(lambda: signal.generation == 3, timeout=10)
    finally:
        listener.stop()

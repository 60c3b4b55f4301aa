"""Talking HTTP/1.1 over a raw socket, to be the client no library lets you be."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    """What came back on a connection, and when the server closed it."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    closed_after: float  # seconds from the start of the exchange

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int) -> socket.socket:
    """A connection to the server on `port`."""
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_until_closed(connection: socket.socket, *, started: float) -> RawResponse:
    """Read the response and wait for the server to close the connection."""
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    closed_after = time.monotonic() - started
    connection.close()
    return parse(received, closed_after=closed_after)


def parse(received: bytes, *, closed_after: float) -> RawResponse:
    """A response from its bytes (status None when there were none)."""
    if not received:
        return RawResponse(None, {}, b"", closed_after)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body, closed_after)


def exchange(port: int, data: bytes) -> RawResponse:
    """Send `data` at once and read until the server closes the connection."""
    started = time.monotonic()
    connection = connect(port)
    connection.sendall(data)
    return read_until_closed(connection, started=started)

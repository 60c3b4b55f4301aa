"""What the websocket handlers need of a socket: frames in and out, and closing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# Close codes. 1000 and 1001 tell Prefect's clients to stop for good (a task worker crashes,
# a result waiter hangs), so the service uses them only to answer a client's own `quit`.
NORMAL_CLOSURE = 1000
POLICY_VIOLATION = 1008
PROTOCOL_VIOLATION = 4001
# The service's own faults: Prefect's clients reconnect after either.
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013


class Disconnected(Exception):
    """The client has gone."""


@dataclass(frozen=True)
class Frame:
    """A frame received: its JSON (None when it is not JSON) and its size in bytes."""

    data: Any
    size: int


class Socket(Protocol):
    """An accepted, authenticated websocket of one of the API's channels."""

    async def receive(self) -> Frame:
        """The next frame.

        :raises Disconnected: the client has gone.
        """
        ...

    def problems(self, message: str, frame: Any) -> list[str]:
        """What keeps `frame` from being the message named `message` of asyncapi.yaml."""
        ...

    async def send(self, frame: Any) -> None:
        """Send one JSON frame.

        :raises Disconnected: the client has gone.
        """
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket (nothing happens if it is closed already)."""
        ...

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


@dataclass(frozen=True)
class Problem:
    """Why a frame is not the message it should be."""

    # Where in the frame: "resource/prefect.resource.id", or "(frame)".
    place: str
    # The rule broken: a JSON Schema keyword ("type", "required", ...).
    rule: str
    # The validator's words, which can quote the value: for the client that sent it only.
    message: str

    def __str__(self) -> str:
        return f"{self.place}: {self.message}"

    def without_value(self) -> str:
        """The problem as the log says it: by place and rule, never quoting the frame."""
        if self.rule == MISSING:
            return f"{self.place}: missing"
        return f"{self.place}: fails '{self.rule}'"


# The rule of a required member that is missing (its place names the member).
MISSING = "missing"


class Socket(Protocol):
    """An accepted, authenticated websocket of one of the API's channels."""

    async def receive(self) -> Frame:
        """The next frame.

        :raises Disconnected: the client has gone.
        """
        ...

    def problems(self, message: str, frame: Any) -> list[Problem]:
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

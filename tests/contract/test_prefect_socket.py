"""PrefectSocket, the handlers' view of a Starlette websocket, when the client has gone."""

from __future__ import annotations

import asyncio

import pytest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.contract.websockets import PrefectSocket


class GoneClient:
    """A websocket whose client left after the service's last look: closing it raises."""

    application_state = WebSocketState.CONNECTED

    def __init__(self, fault: Exception) -> None:
        self.fault = fault

    async def close(self, code: int, reason: str = "") -> None:  # noqa: ARG002
        raise self.fault


@pytest.mark.parametrize(
    "fault",
    [WebSocketDisconnect(1006), RuntimeError("closed"), OSError("reset")],
    ids=["disconnect", "runtime", "os"],
)
def test_closing_a_socket_whose_client_has_gone_is_quiet(fault: Exception) -> None:
    socket = PrefectSocket(GoneClient(fault))  # type: ignore[arg-type]

    asyncio.run(socket.close(1011, "the service failed"))

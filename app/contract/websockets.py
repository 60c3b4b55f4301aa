"""The API's websocket channels (asyncapi.yaml), served beside Connexion on the same port.

`WebSocketChannels` is an ASGI middleware in front of Connexion's stack: a websocket request
for one of the channels goes to its handler, everything else on to Connexion. Each socket
starts with Prefect's handshake (the `prefect` subprotocol and an `auth` frame); frames are
JSON and are checked against asyncapi.yaml before a handler acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from connexion import FlaskApp
from connexion.middleware import MiddlewarePosition
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app.contract.asyncapi import Channel, frame_validator
from app.contract.validation import RequestValidationError, parse_json_body
from app.db.database import DatabaseUnavailable
from app.handlers.sockets import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    Disconnected,
    Frame,
    Problem,
    Socket,
)
from app.observability import metrics
from app.observability.logs import log_failure

logger = logging.getLogger(__name__)

PREFECT_SUBPROTOCOL = "prefect"
PROTOCOL_ERROR = 1002
MAX_REASON_BYTES = 123
BASE_PATH = "/api"

# What the handlers receive and send on each channel: asyncapi.yaml must say the same
# (`make check` compares them).
SERVED_CHANNELS = {
    channel.address: channel
    for channel in (
        Channel(
            "/task_runs/subscriptions/scheduled",
            received=frozenset({"auth", "subscribe", "ack", "quit"}),
            sent=frozenset({"auth_success", "scheduled_task_run"}),
        ),
        Channel(
            "/events/in", received=frozenset({"auth", "event"}), sent=frozenset({"auth_success"})
        ),
        Channel(
            "/events/out",
            received=frozenset({"auth", "filter"}),
            sent=frozenset({"auth_success", "received_event"}),
        ),
    )
}

SocketHandler = Callable[[Socket], Awaitable[None]]


class PrefectSocket:
    """A Starlette websocket as the handlers' Socket: JSON frames, checked against the
    contract on request, and disconnects reported as Disconnected.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._validator = frame_validator()

    async def receive(self) -> Frame:
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError) as gone:
            raise Disconnected from gone
        if message["type"] == "websocket.disconnect":
            raise Disconnected
        # A lone surrogate in a text frame survives as bytes that are not UTF-8 (refused below).
        raw: bytes = message.get("bytes") or message.get("text", "").encode(errors="surrogatepass")
        try:
            # As strict as a request body: no NaN or Infinity, no lone UTF-16 surrogate,
            # which the database could not store.
            return Frame(data=parse_json_body(raw, encoding="utf-8"), size=len(raw))
        except RequestValidationError:
            # Not JSON, not UTF-8, or nested deeper than the parser goes.
            return Frame(data=None, size=len(raw))

    def problems(self, message: str, frame: Any) -> list[Problem]:
        return [
            Problem(
                place="/".join(str(part) for part in item["loc"][1:]) or "(frame)",
                rule=item["type"],
                message=item["msg"],
            )
            for item in self._validator.errors(message, frame)
        ]

    async def send(self, frame: Any) -> None:
        try:
            await self._websocket.send_text(json.dumps(frame, separators=(",", ":")))
        except (WebSocketDisconnect, RuntimeError, OSError) as gone:
            raise Disconnected from gone

    async def close(self, code: int, reason: str = "") -> None:
        if self._websocket.application_state == WebSocketState.DISCONNECTED:
            return
        # A close frame holds at most 123 bytes of reason. The client may have closed first.
        reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._websocket.close(code=code, reason=reason)


@dataclass(frozen=True)
class SocketAccess:
    """What a client must show, and how soon, before a channel serves it."""

    # "user:password" its `auth` token must be; None: any token.
    auth_string: str | None
    # Seconds the `auth` frame may take to arrive after the socket is accepted.
    auth_timeout: float


async def open_prefect_socket(
    websocket: WebSocket, *, access: SocketAccess
) -> PrefectSocket | None:
    """Accept the websocket and authenticate it as Prefect's clients expect; None when it was
    refused (and closed).

    A client offering the `prefect` subprotocol sends `auth` first and gets `auth_success`;
    with credentials configured its token must be them. A client offering none skips the
    exchange, unless credentials are required.
    """
    offered = [
        protocol.strip()
        for value in websocket.headers.getlist("sec-websocket-protocol")
        for protocol in value.split(",")
    ]
    if PREFECT_SUBPROTOCOL not in offered:
        return await _legacy_socket(websocket, access)
    await websocket.accept(subprotocol=PREFECT_SUBPROTOCOL)
    socket = PrefectSocket(websocket)
    return socket if await _authenticated(socket, access) else None


async def _legacy_socket(websocket: WebSocket, access: SocketAccess) -> PrefectSocket | None:
    """A client without the subprotocol: served without the exchange, unless credentials
    are required, which it has no way to give.
    """
    await websocket.accept()
    socket = PrefectSocket(websocket)
    if access.auth_string:
        # Accepted first: a close before accepting is a plain HTTP 403 to the client.
        await socket.close(PROTOCOL_ERROR, "'prefect' subprotocol required when auth is configured")
        return None
    return socket


async def _authenticated(socket: PrefectSocket, access: SocketAccess) -> bool:
    """The `auth` exchange; False when the socket was refused (and closed) or has gone."""
    try:
        frame = await asyncio.wait_for(socket.receive(), access.auth_timeout)
    except Disconnected:
        return False
    except TimeoutError:
        await socket.close(POLICY_VIOLATION, f"No 'auth' message within {access.auth_timeout:g} s")
        return False
    refusal = _refusal(frame.data, access.auth_string)
    if refusal is not None:
        await socket.close(POLICY_VIOLATION, refusal)
        return False
    try:
        await socket.send({"type": "auth_success"})
    except Disconnected:
        return False
    return True


def _refusal(frame: Any, auth_string: str | None) -> str | None:
    """Why an `auth` frame is refused; None when it is accepted."""
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        return "Expected 'auth' message"
    if not auth_string:
        return None
    token = frame.get("token")
    if not isinstance(token, str) or not token:
        return "Auth required but no token provided"
    if not hmac.compare_digest(token.encode(), auth_string.encode()):
        return "Invalid token"
    return None


def mount_websockets(
    app: FlaskApp, *, handlers: dict[str, SocketHandler], access: SocketAccess
) -> None:
    """Serve the websocket channels on `app`, ahead of everything Connexion does."""
    mismatched = set(SERVED_CHANNELS) ^ set(handlers)
    if mismatched:
        raise ValueError(f"websocket channels without a handler, or unknown: {sorted(mismatched)}")
    app.add_middleware(
        WebSocketChannels,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        handlers=handlers,
        access=access,
    )


class WebSocketChannels:
    """Serves the API's websocket channels; passes every other request on."""

    def __init__(
        self, app: ASGIApp, *, handlers: dict[str, SocketHandler], access: SocketAccess
    ) -> None:
        self.app = app
        self.handlers = {BASE_PATH + address: handler for address, handler in handlers.items()}
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        handler = self.handlers.get(scope["path"])
        if handler is None:
            # Closing before accepting refuses the upgrade (HTTP 403).
            await websocket.close(POLICY_VIOLATION)
            return
        socket = await open_prefect_socket(websocket, access=self.access)
        if socket is not None:
            await _serve(handler, socket, address=scope["path"])


async def _serve(handler: SocketHandler, socket: Socket, *, address: str) -> None:
    """Run the channel's handler on the socket. A fault of the service closes the socket
    with a code on which Prefect's clients reconnect, and is logged as the HTTP operations'
    faults are: by name and place, never by message (which can quote rows and events).
    """
    open_sockets = metrics.WEBSOCKETS_OPEN.labels(address)
    open_sockets.inc()
    try:
        await handler(socket)
    except DatabaseUnavailable as error:
        what = f"websocket {address}: database unavailable ({error.reason})"
        log_failure(logger, logging.WARNING, what, error, with_stack=False)
        await socket.close(TRY_AGAIN_LATER, "The database is unavailable. Reconnect later.")
    except Exception as error:
        log_failure(
            logger, logging.ERROR, f"websocket {address}: unhandled error", error, with_stack=True
        )
        await socket.close(INTERNAL_ERROR, "Internal Server Error")
    finally:
        open_sockets.dec()

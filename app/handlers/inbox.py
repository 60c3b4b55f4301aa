"""Reading a socket's frames in the background, so that a handler can wait for something
else and still notice when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from app.handlers.sockets import Disconnected, Frame, Socket

_Other = TypeVar("_Other")


class Inbox:
    """The frames of a socket as they arrive; `Disconnected` once the client has gone."""

    def __init__(self, socket: Socket) -> None:
        self._socket = socket
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Inbox:
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            while True:
                self._frames.put_nowait(await self._socket.receive())
        except Disconnected:
            self._frames.put_nowait(None)

    async def next(self, *, timeout: float | None = None) -> Frame | None:
        """The next frame; None when none came within `timeout` seconds.

        :raises Disconnected: the client has gone.
        """
        try:
            frame = await asyncio.wait_for(self._frames.get(), timeout)
        except TimeoutError:
            return None
        if frame is None:
            self._frames.put_nowait(None)  # every later call says so too
            raise Disconnected
        return frame

    def discard_pending(self) -> None:
        """Forget the frames that have come so far; a client that left is still seen."""
        while not self._frames.empty():
            if self._frames.get_nowait() is None:
                self._frames.put_nowait(None)
                return

    async def race(self, other: Awaitable[_Other]) -> Frame | _Other:
        """Whichever comes first: the next frame, or what `other` gives (`other` when both do).

        :raises Disconnected: the client has gone.
        """
        frame_task = asyncio.ensure_future(self.next())
        other_task = asyncio.ensure_future(other)
        try:
            await asyncio.wait({frame_task, other_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (frame_task, other_task):
                if not task.done():
                    task.cancel()
                # Every outcome is collected, so that none is reported as never retrieved.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # What `other` gave is never dropped; a frame is (a leaving client is seen again).
        if other_task.done() and not other_task.cancelled():
            return other_task.result()
        frame = frame_task.result()
        assert frame is not None, "next() without a timeout returns a frame or raises"
        return frame

"""Waking coroutines of this process when a transaction has committed something they wait for."""

from __future__ import annotations

import asyncio
import threading


class Signal:
    """Something happened in this process; any thread may say so, coroutines wait for it.

    A waiter first reads `generation`, looks for what it wants, then waits with that
    generation: a signal given in between is not missed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def generation(self) -> int:
        """How many times the signal was given so far."""
        return self._generation

    def notify(self) -> None:
        """Wake every waiter (callable from any thread)."""
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    async def wait(self, *, seen: int, timeout: float) -> bool:
        """Wait until the signal is given after generation `seen`, at most `timeout` seconds;
        whether it was.
        """
        waiter = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._generation != seen:
                return True
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)
        return True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

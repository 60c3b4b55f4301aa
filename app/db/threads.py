"""Threads that run database work for coroutines, off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

_Result = TypeVar("_Result")


class DatabaseThreads(ThreadPoolExecutor):
    """A thread pool that can wait for the work given to it so far, and go on afterwards.

    Before the database's connections are closed (the service stopping), the work still
    running must end: it may be holding one of them.
    """

    def __init__(self, *, threads: int) -> None:
        super().__init__(max_workers=threads, thread_name_prefix="database")
        self._lock = threading.Lock()
        self._running: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., _Result], /, *args: Any, **kwargs: Any) -> Future[_Result]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._running.discard(future)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the work given so far has ended (at most `timeout` seconds)."""
        with self._lock:
            running = list(self._running)
        wait(running, timeout=timeout)

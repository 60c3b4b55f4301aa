"""One SQLite writer at a time, queued by the kernel instead of SQLite's polling."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path
from typing import BinaryIO


class WriterLockTimeout(Exception):
    """Another writer kept the lock for longer than a writer may wait."""


class WriterLock:
    """Admits one writer at a time, across this process's threads and the service's processes.

    SQLite allows one write transaction at a time and makes the others wait in its busy
    handler, which retries with sleeps of up to 100 ms: under load, that is where the slowest
    creates spent their time. Writers queue here instead, first on a lock inside the process,
    then on an exclusive `flock` of a file beside the database, which the kernel hands to the
    next process the moment it is released (and releases by itself if a process dies).
    """

    def __init__(self, path: Path | None, *, timeout: float) -> None:
        self._thread_lock = threading.Lock()
        self._timeout = timeout
        self._path = path
        # Opened at the first write and kept open: the lock belongs to this open file.
        self._file: BinaryIO | None = None

    def acquire(self) -> None:
        """Wait for the lock: up to the timeout behind this process's threads, then for as
        long as another process's write transaction lasts (one create, a few milliseconds).
        """
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise WriterLockTimeout(f"no write turn within {self._timeout} s")
        try:
            if self._path is not None:
                if self._file is None:
                    self._file = self._path.open("ab")
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Let the next writer in."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        """Close the lock file; the next writer opens it again."""
        with self._thread_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

"""One SQLite writer at a time, queued by the kernel instead of SQLite's polling."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriterLockTimeout(Exception):
    """Another writer kept the lock for longer than a writer may wait."""


class WriterLockUnavailable(Exception):
    """The lock file cannot be opened or locked (a fault of the file system)."""


class WriterLock:
    """Admits one writer at a time, across this process's threads and the service's processes.

    SQLite allows one write transaction at a time and makes the others wait in its busy
    handler, which retries with sleeps of up to 100 ms: under load, that is where the slowest
    creates spent their time. Writers queue here instead, first on a lock inside the process,
    then on an exclusive `flock` of a file beside the database, which the kernel hands to the
    next process the moment it is released (and releases by itself if a process dies).

    No writer waits longer than the timeout, in either queue: a process that stalls while
    holding the lock (stopped, or stuck in I/O) makes the others give up, not hang.
    """

    def __init__(self, path: Path | None, *, timeout: float) -> None:
        self._thread_lock = threading.Lock()
        self._timeout = timeout
        self._path = path
        # Opened at the first write and kept open: the lock belongs to this open file.
        self._descriptor: int | None = None
        # A wait for the file lock that is still going on in a helper thread.
        self._wait: _FileLockWait | None = None
        self._guard = threading.Lock()
        # The thread holding the lock, if one does.
        self._owner: int | None = None
        # Per thread: when its writer gives up, if set (see `deadline`).
        self._deadlines = threading.local()

    def acquire(self) -> None:
        """Wait for the lock, up to the timeout in all.

        :raises WriterLockTimeout: the lock stayed taken for the whole timeout.
        :raises WriterLockUnavailable: the lock file cannot be opened or locked.
        """
        deadline: float | None = getattr(self._deadlines, "value", None)
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        if not self._thread_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise WriterLockTimeout(f"no write turn within {self._timeout:g} s")
        try:
            if self._path is not None:
                self._lock_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        self._owner = threading.get_ident()

    @contextmanager
    def deadline(self, deadline: float) -> Iterator[None]:
        """Within the block, this thread's writers give up at `deadline` (a `time.monotonic()`
        instant) instead of a timeout after they ask: a writer that acts for others who have
        been waiting already (group commit) waits no longer than the first of them may.
        """
        self._deadlines.value = deadline
        try:
            yield
        finally:
            self._deadlines.value = None

    def release(self) -> None:
        """Let the next writer in."""
        self._owner = None
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        self._thread_lock.release()

    def release_if_held(self) -> None:
        """Let the next writer in, if this thread holds the lock."""
        if self._owner == threading.get_ident():
            self.release()

    def close(self) -> None:
        """Close the lock file; the next writer opens it again."""
        with self._thread_lock, self._guard:
            if self._descriptor is not None and self._wait is None:
                os.close(self._descriptor)
                self._descriptor = None

    def _lock_file(self, deadline: float) -> None:
        """Take the file lock (this thread holds the thread lock), waiting until `deadline`.

        The kernel offers no timed `flock`, so a wait happens in a helper thread: if this
        writer gives up, the wait goes on for the next writer of this process, and a lock it
        obtains for nobody is released at once.
        """
        descriptor = self._open()
        while True:
            with self._guard:
                wait = self._wait
                if wait is not None:
                    wait.wanted = True
            if wait is None:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    wait = self._start_wait(descriptor)
                except OSError as error:
                    raise WriterLockUnavailable(f"cannot lock {self._path}: {error}") from error
            wait.ended.wait(max(deadline - time.monotonic(), 0))
            with self._guard:
                if not wait.ended.is_set():
                    wait.wanted = False
                    raise WriterLockTimeout(f"no write turn within {self._timeout:g} s")
                self._wait = None
            if wait.error is not None:
                raise WriterLockUnavailable(f"cannot lock {self._path}: {wait.error}")
            if wait.acquired:
                return
            # It ended just after an earlier writer gave up, and let the lock go: try again.

    def _start_wait(self, descriptor: int) -> _FileLockWait:
        with self._guard:
            wait = self._wait = _FileLockWait(descriptor, self._guard)
        return wait

    def _open(self) -> int:
        if self._descriptor is None:
            assert self._path is not None
            self._descriptor = _open_lock_file(self._path)
        return self._descriptor


def _open_lock_file(path: Path) -> int:
    """The lock file, opened for reading: a lock needs no more, and so works on files and
    file systems that cannot be written (then only if it exists already).
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise WriterLockUnavailable(f"cannot open {path}: {error}") from error


class _FileLockWait:
    """A blocking `flock` in a helper thread, so that whoever waits for it can give up."""

    def __init__(self, descriptor: int, guard: threading.Lock) -> None:
        self.descriptor = descriptor
        self.guard = guard
        self.ended = threading.Event()
        self.wanted = True
        self.acquired = False
        self.error: OSError | None = None
        threading.Thread(target=self._wait, name="writer-lock-wait", daemon=True).start()

    def _wait(self) -> None:
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX)
        except OSError as error:
            with self.guard:
                self.error = error
                self.ended.set()
            return
        with self.guard:
            if self.wanted:
                self.acquired = True
            else:
                fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            self.ended.set()

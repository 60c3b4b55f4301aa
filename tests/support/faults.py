"""Real faults for the fault-injection tests: a full disk, unwritable files, a busy CPU.

Each needs privileges (mounting, `chattr`); where the machine refuses, the test is skipped
and says why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(directory: Path, *, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `directory` (which it creates), unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system is full; return the file."""
    filler = directory / "filler"
    with filler.open("wb") as stream:
        chunk = b"\0" * 65536
        try:
            while True:
                stream.write(chunk)
                stream.flush()
        except OSError:
            pass
    return filler


def set_immutable(paths: list[Path], *, immutable: bool) -> None:
    """`chattr +i` or `-i`: even root can then neither write nor open them for writing."""
    flag = "+i" if immutable else "-i"
    changed = subprocess.run(
        ["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False
    )
    if changed.returncode != 0:
        if immutable:
            pytest.skip(f"cannot make files immutable here: {changed.stderr.strip()}")
        raise RuntimeError(changed.stderr)


@contextmanager
def busy_cpus(processes: int) -> Iterator[None]:
    """`processes` processes spinning on the CPU for as long as the block lasts."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def anonymous_memory_bytes(pid: int) -> int:
    """The resident memory a process allocated itself (its heap; `RssAnon`).

    Left out: the pages of the files it maps, its libraries' code (about 30 MiB for a
    worker), which the kernel may drop and fault back in at any time, whatever the process
    holds.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RssAnon for {pid}")


def flock_holder(path: Path) -> int | None:
    """The process holding an exclusive `flock` on `path`, from /proc/locks."""
    inode = path.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (a waiter has "->" after the id)
        if "->" in fields:
            continue
        is_exclusive_flock = len(fields) >= 6 and fields[1:4:2] == ["FLOCK", "WRITE"]
        if is_exclusive_flock and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def flock_waiters(path: Path) -> int:
    """How many waits for a `flock` on `path` are blocked, from /proc/locks."""
    inode = path.stat().st_ino
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "2: -> FLOCK  ADVISORY  WRITE 1235 fd:01:5678 0 EOF"
        if len(fields) >= 7 and fields[1:3] == ["->", "FLOCK"]:
            waiting += int(fields[6].rsplit(":", 1)[1]) == inode
    return waiting


def wait_for(condition: Callable[[], object], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())

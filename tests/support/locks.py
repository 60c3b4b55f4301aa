"""Another process holding the service's SQLite writer lock, as a stalled worker would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def hold_in_another_process(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A process holding the file lock for `seconds`, started once it holds it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(float(sys.argv[2]))",
            str(path),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder

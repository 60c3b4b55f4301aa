"""Waiting for the machine to settle between bench runs, and finding processes by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.bench import procstat
from tests.bench.procstat import wait_until_idle

BUSY_SECONDS = 1.5


def test_waits_for_a_busy_process_it_was_not_told_about() -> None:
    # As the database's processes go on with the queries of a run after its workers idle.
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time\nend = time.monotonic() + {BUSY_SECONDS}\n"
            "while time.monotonic() < end: pass",
        ]
    )
    try:
        time.sleep(0.2)
        started = time.monotonic()
        wait_until_idle([], timeout=10)
        waited = time.monotonic() - started
    finally:
        busy.wait()

    assert waited >= BUSY_SECONDS - 0.5


def test_returns_soon_on_an_idle_machine() -> None:
    started = time.monotonic()
    wait_until_idle([], timeout=10)

    assert time.monotonic() - started < 5


def test_processes_are_found_by_their_command_name() -> None:
    own_name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()

    assert os.getpid() in procstat.processes_named(own_name)
    assert procstat.processes_named("no-such-command-name") == []


# Works for two milliseconds of its CPU time when told to, then waits again.
WORKS_WHEN_TOLD = """
import sys, time
print("waiting", flush=True)
sys.stdin.readline()
end = time.thread_time() + 0.002
while time.thread_time() < end:
    pass
print("worked", flush=True)
sys.stdin.readline()
"""


def wait_until_asleep(pid: int) -> None:
    """Until the process waits (state S): the kernel has then added up all its CPU time,
    where a running process's last few milliseconds may not be counted yet.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "S":
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never waited")


def test_a_few_milliseconds_of_cpu_are_measured_to_below_a_tick() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WORKS_WHEN_TOLD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        assert worker.stdin is not None
        assert worker.stdout is not None
        assert worker.stdout.readline() == "waiting\n"
        wait_until_asleep(worker.pid)
        before = procstat.on_cpu_seconds(worker.pid)
        worker.stdin.write("\n")
        worker.stdin.flush()
        assert worker.stdout.readline() == "worked\n"
        wait_until_asleep(worker.pid)
        after = procstat.on_cpu_seconds(worker.pid)
        worker.stdin.write("\n")

    assert before is not None
    assert after is not None
    # Two milliseconds of work, a fifth of one of /proc/PID/stat's ticks.
    assert 0.002 <= after - before < 0.5


def test_a_process_that_is_gone_has_no_cpu_time() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()

    assert procstat.on_cpu_seconds(ended.pid) is None

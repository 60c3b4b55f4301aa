"""CPU time and memory of server processes, read from /proc (Linux only, no dependencies)."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_INTERVAL_SECONDS = 0.1
# A process is idle when it used at most this share of a core over one window of this many
# seconds (the kernel counts CPU time in ticks of 10 ms).
IDLE_WINDOW_SECONDS = 0.3
IDLE_CPU_SHARE = 0.1
# The machine is idle when all of its processes together used at most this share of a core
# (other services and the kernel use a little all the time).
IDLE_MACHINE_CPU_SHARE = 0.3


def children(pid: int) -> list[int]:
    """The ids of `pid`'s child processes (from every thread's children list)."""
    found: set[int] = set()
    tasks = PROC / str(pid) / "task"
    try:
        for task in tasks.iterdir():
            text = _read(task / "children")
            found.update(int(child) for child in text.split())
    except FileNotFoundError:
        return []
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    found: list[int] = []
    queue = children(pid)
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children(child))
    return found


def command_line(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return ""


def processes_named(name: str) -> list[int]:
    """The ids of the processes whose command name (/proc/PID/comm) is `name`."""
    found: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _read(entry / "comm").strip() == name:
                found.append(int(entry.name))
        except FileNotFoundError:  # it ended meanwhile
            continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far, None once it is gone."""
    try:
        stat = _read(PROC / str(pid) / "stat")
    except FileNotFoundError:
        return None
    # The command name in parentheses may contain spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / CLOCK_TICKS_PER_SECOND


def on_cpu_seconds(pid: int) -> float | None:
    """The time the process's live threads have run on a CPU so far, to the nanosecond (from
    /proc/PID/task/*/schedstat), None once it is gone or where the kernel keeps no schedstat.

    /proc/PID/stat counts in ticks of 10 ms: a process that ran a few milliseconds during a
    short measurement may show none of them, or a whole tick. The kernel adds a thread's time
    up when it stops running (and at its ticks), so read a process while it waits, as the
    database's do between requests.
    """
    total = 0.0
    try:
        threads = list((PROC / str(pid) / "task").iterdir())
        for thread in threads:
            total += int(_read(thread / "schedstat").split()[0]) / 1e9
    except FileNotFoundError:
        return None
    return total


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of the process in bytes; {} once it is gone."""
    try:
        status = _read(PROC / str(pid) / "status")
    except FileNotFoundError:
        return {}
    found: dict[str, int] = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024  # reported in kB
    return found


def machine_cpu_seconds() -> float:
    """CPU time the machine's CPUs have spent running anything so far (user, system, irqs)."""
    fields = _read(PROC / "stat").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS_PER_SECOND


def waited_children_cpu_seconds() -> float:
    """User plus system CPU time of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _read(path: Path) -> str:
    """A /proc file's text; a vanished process raises FileNotFoundError."""
    try:
        return path.read_text()
    except ProcessLookupError as gone:  # reading a file of a process that just exited
        raise FileNotFoundError(str(path)) from gone


@dataclass
class ProcessUsage:
    """What one server process used during one wrk run."""

    pid: int
    cpu_seconds: float | None = None
    peak_rss_bytes: int = 0
    # The kernel's peak since the process started, read at the end of the run.
    lifetime_peak_rss_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary, sizes in MB."""
        return {
            "pid": self.pid,
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 2),
            "peak_rss_mb": round(self.peak_rss_bytes / 1e6, 1),
            "lifetime_peak_rss_mb": round(self.lifetime_peak_rss_bytes / 1e6, 1),
        }


@dataclass
class _Sampler:
    """Samples the RSS of some processes on a thread until stopped."""

    pids: list[int]
    peaks: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample_once(self) -> None:
        for pid in self.pids:
            rss = memory_bytes(pid).get("VmRSS", 0)
            self.peaks[pid] = max(self.peaks.get(pid, 0), rss)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample_once()
            self.stop.wait(RSS_SAMPLE_INTERVAL_SECONDS)


@contextmanager
def measured(pids: list[int]) -> Iterator[list[ProcessUsage]]:
    """Measure CPU seconds and peak RSS of `pids` during the `with` block.

    The list yielded is filled in when the block ends, one ProcessUsage per pid in order.
    """
    usages = [ProcessUsage(pid) for pid in pids]
    cpu_before = {pid: cpu_seconds(pid) for pid in pids}
    sampler = _Sampler(pids)
    sampler.sample_once()
    thread = threading.Thread(target=sampler.run, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield usages
    finally:
        sampler.stop.set()
        thread.join(timeout=5)
        sampler.sample_once()
        _fill(usages, cpu_before, sampler.peaks)


def _fill(
    usages: list[ProcessUsage],
    cpu_before: dict[int, float | None],
    peaks: dict[int, int],
) -> None:
    """Complete each usage with the CPU time used since `cpu_before` and the sampled peak."""
    for usage in usages:
        before, after = cpu_before[usage.pid], cpu_seconds(usage.pid)
        usage.cpu_seconds = None if before is None or after is None else after - before
        usage.peak_rss_bytes = peaks.get(usage.pid, 0)
        usage.lifetime_peak_rss_bytes = memory_bytes(usage.pid).get("VmHWM", 0)


def wait_until_idle(pids: list[int], *, timeout: float) -> None:
    """Wait until every one of `pids` is idle (or gone), and the machine as a whole is, for at
    most `timeout` seconds.

    A server goes on with the requests a load generator left when it stopped. Connections
    opened meanwhile all go to the workers that are free to accept them, and stay there. The
    database's own processes go on too: a worker waiting for a long query is idle while the
    query still takes the CPU the next run would have.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = {pid: cpu_seconds(pid) for pid in pids}
        machine_before = machine_cpu_seconds()
        time.sleep(IDLE_WINDOW_SECONDS)
        used = [_used_since(pid, before[pid]) for pid in pids]
        machine_used = machine_cpu_seconds() - machine_before
        if (
            all(seconds <= IDLE_CPU_SHARE * IDLE_WINDOW_SECONDS for seconds in used)
            and machine_used <= IDLE_MACHINE_CPU_SHARE * IDLE_WINDOW_SECONDS
        ):
            return


def _used_since(pid: int, before: float | None) -> float:
    after = cpu_seconds(pid)
    return 0.0 if before is None or after is None else after - before

"""Where one operation's CPU time goes: the functions with the most self time.

    python -m tests.bench.profile --operation read     # or `make profile OP=read`

The requests go straight to the ASGI application, as in tests/bench/inprocess.py, under
Python's own profiler (cProfile): on the event loop's thread and on every thread that runs
Flask, the handlers and the group commits, merged. A profiler slows small functions down more
than large ones; read the list as the order of the costs, and take the absolute CPU time per
request from `python -m tests.bench.inprocess`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.inprocess import OPERATIONS, Driver, requests_of, send_all

# What pstats keys a function by: (file, line, name).
FunctionKey = tuple[str, int, str]
# Built-ins in which a thread waits rather than works (the event loop for the Flask thread,
# a thread for a lock or a queue): left out of the list and of the total.
WAITS = frozenset(
    {
        "<method 'poll' of 'select.epoll' objects>",
        "<method 'acquire' of '_thread.lock' objects>",
        "<method 'get' of '_queue.SimpleQueue' objects>",
    }
)


class ThreadProfiles:
    """One profiler per thread that runs the wrapped function, for merging afterwards."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def profiled(*args: Any, **kwargs: Any) -> Any:
            profile = self._thread_profile()
            profile.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profile.disable()

        return profiled

    def _thread_profile(self) -> cProfile.Profile:
        profile: cProfile.Profile | None = getattr(self._local, "profile", None)
        if profile is None:
            profile = self._local.profile = cProfile.Profile()
            with self._lock:
                self.profiles.append(profile)
        return profile


def profile_operation(operation: str, count: int) -> pstats.Stats:
    """The merged profile of `count` requests of `operation` (after a warm-up)."""
    from app.db.migrate import upgrade  # noqa: PLC0415 - the application loads on demand
    from app.main import create_app  # noqa: PLC0415
    from app.settings import Settings  # noqa: PLC0415

    directory = Path(tempfile.mkdtemp(prefix="taskrun-profile-"))
    try:
        url = f"sqlite:///{directory / 'profile.db'}"
        upgrade(url)
        app = create_app(Settings(database_url=url))
        driver = Driver(app)
        try:
            prepared = requests_of(operation, driver, count)
            send_all(driver, prepared[: max(1, count // 10)])
            threads = ThreadProfiles()
            bridge = app._middleware_app.asgi_app
            bridge._respond = threads.wrap(bridge._respond)
            loop_profile = cProfile.Profile()
            loop_profile.enable()
            send_all(driver, prepared)
            loop_profile.disable()
        finally:
            driver.close()
        stats = pstats.Stats(loop_profile)
        for profile in threads.profiles:
            stats.add(profile)
        return stats
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def top_by_self_time(stats: pstats.Stats, limit: int) -> list[tuple[FunctionKey, float, int]]:
    """The `limit` functions with the most self time: (function, seconds, calls)."""
    entries = [
        (function, self_seconds, calls)
        for function, (_primitive, calls, self_seconds, _cumulative, _callers) in working(stats)
    ]
    entries.sort(key=lambda entry: entry[1], reverse=True)
    return entries[:limit]


def working(stats: pstats.Stats) -> list[tuple[FunctionKey, Any]]:
    """The profile's entries, without the waits."""
    entries: dict[FunctionKey, Any] = stats.stats  # type: ignore[attr-defined]
    return [(function, entry) for function, entry in entries.items() if function[2] not in WAITS]


def describe(function: FunctionKey) -> str:
    """`name (path:line)`, the path from the package on (site-packages, app/, the stdlib)."""
    path, line, name = function
    if path == "~":
        return name  # a built-in
    parts = Path(path).parts
    for anchor in ("site-packages", "work", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{name} ({'/'.join(parts[-3:])}:{line})"


def report(operation: str, count: int, limit: int) -> list[str]:
    stats = profile_operation(operation, count)
    total = sum(entry[2] for _function, entry in working(stats))
    lines = [
        f"{operation}: {count} requests, top {limit} functions by self time (cProfile;"
        f" {total * 1e3 / count:.2f} ms per request while profiled, waits left out)",
        f"{'share':>6} {'us/request':>10} {'calls/req':>9}  function",
    ]
    for function, seconds, calls in top_by_self_time(stats, limit):
        lines.append(
            f"{seconds / total:6.1%} {seconds * 1e6 / count:10.1f} {calls / count:9.1f}"
            f"  {describe(function)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__)
    parser.add_argument("--operation", choices=OPERATIONS, default="read")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    arguments = parser.parse_args(argv)
    for line in report(arguments.operation, arguments.requests, arguments.top):
        print(line)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

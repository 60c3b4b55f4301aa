"""Running wrk with the Lua scripts in lua/ and reading the result line they print."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_DIRECTORY = Path(__file__).resolve().parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "
# wrk shares the two cores with the server: more threads than this only take CPU from it.
MAX_THREADS = 2
# A request slower than this counts as a timeout (a socket error), not as a latency.
REQUEST_TIMEOUT_SECONDS = 10


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured: throughput, latency, statuses and errors."""

    duration_seconds: float
    requests: int
    latency_ms: dict[str, float]
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    # wrk's own count of responses with a status above 399.
    error_statuses: int
    # Requests that reused a prepared object because the prepared ones ran out.
    reused: int = 0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_seconds if self.duration_seconds > 0 else 0.0

    @property
    def non_2xx(self) -> int:
        """Responses whose status is not 2xx, counted by the script."""
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())

    @property
    def successful_per_second(self) -> float:
        """Responses with a 2xx status, per second."""
        successful = sum(count for status, count in self.statuses.items() if 200 <= status < 300)
        return successful / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dictionary."""
        return {
            "duration_seconds": round(self.duration_seconds, 3),
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 1),
            "latency_ms": self.latency_ms,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "wrk_error_statuses": self.error_statuses,
            "reused": self.reused,
        }


def wrk_executable() -> str:
    """The path of wrk, or a WrkError saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: `apt-get install -y wrk` (make bench does that)")
    return path


def wrk_version() -> str:
    """wrk's version line (`wrk debian/4.1.0-3+b2 [epoll] ...`)."""
    completed = subprocess.run(
        [wrk_executable(), "--version"], capture_output=True, text=True, check=False
    )
    line = (completed.stdout or completed.stderr).splitlines()[0]
    return line.split(" Copyright")[0].strip()


def write_script(operation: str, directory: Path) -> Path:
    """lua/common.lua followed by lua/<operation>.lua, as one script in `directory`."""
    common = (LUA_DIRECTORY / "common.lua").read_text()
    own = (LUA_DIRECTORY / f"{operation}.lua").read_text()
    script = directory / f"{operation}.lua"
    script.write_text(f"{common}\n{own}")
    return script


def threads_for(concurrency: int) -> int:
    """wrk threads for `concurrency` connections: one per connection up to MAX_THREADS."""
    return max(1, min(concurrency, MAX_THREADS))


def wrk_command(
    base_url: str, script: Path, *, concurrency: int, seconds: float, arguments: list[str]
) -> list[str]:
    """The wrk command line for one run; `arguments` go to the script's init()."""
    return [
        wrk_executable(),
        "--threads", str(threads_for(concurrency)),
        "--connections", str(concurrency),
        "--duration", f"{max(1, round(seconds))}s",
        "--timeout", f"{REQUEST_TIMEOUT_SECONDS}s",
        "--script", str(script),
        base_url,
        "--", *arguments,
    ]  # fmt: skip


def run_wrk(
    base_url: str, script: Path, *, concurrency: int, seconds: float, arguments: list[str]
) -> WrkResult:
    """Run wrk once against `base_url` and parse the script's result line."""
    command = wrk_command(
        base_url, script, concurrency=concurrency, seconds=seconds, arguments=arguments
    )
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=seconds + 120
        )
    except subprocess.TimeoutExpired as hung:
        raise WrkError(f"wrk did not finish within {hung.timeout:.0f} s") from hung
    if completed.returncode != 0:
        raise WrkError(
            f"wrk exited with {completed.returncode}: {completed.stderr.strip()}"
            f" {completed.stdout.strip()}"
        )
    return parse_output(completed.stdout)


def parse_output(stdout: str) -> WrkResult:
    """The WrkResult from wrk's output: the `BENCH_RESULT {json}` line of common.lua."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise WrkError(f"wrk printed no {RESULT_PREFIX.strip()} line:\n{stdout}")
    data = json.loads(lines[-1][len(RESULT_PREFIX) :])
    errors: dict[str, int] = data["errors"]
    return WrkResult(
        duration_seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        latency_ms={name: value / 1000 for name, value in data["latency_us"].items()},
        statuses={int(status): count for status, count in data["statuses"].items()},
        socket_errors={name: errors[name] for name in ("connect", "read", "write", "timeout")},
        error_statuses=errors["status"],
        reused=data.get("reused", 0),
    )

"""The delay side: `python -m tests.compat.background.delay life|add N|timed N`.

`life` delays one run of each task, waits for each result, and prints them with the runs'
ids as JSON. `add N` delays N additions without waiting and prints their ids. `timed N`
delays N additions, waits for every result, and prints how long each part took.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect.futures import PrefectDistributedFuture

from tests.compat.background.tasks import add, fail, flaky

RESULT_TIMEOUT_SECONDS = 60


def life() -> dict[str, Any]:
    marker = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "flaky-marker"
    futures: dict[str, PrefectDistributedFuture[Any]] = {
        "add": add.delay(1, 2),
        "fail": fail.delay(7),
        "flaky": flaky.delay(str(marker)),
    }
    results: dict[str, Any] = {"ids": {name: str(f.task_run_id) for name, f in futures.items()}}
    results["add"] = futures["add"].result(timeout=RESULT_TIMEOUT_SECONDS)
    try:
        futures["fail"].result(timeout=RESULT_TIMEOUT_SECONDS)
    except ValueError as raised:
        results["fail"] = f"{type(raised).__name__}: {raised}"
    results["flaky"] = futures["flaky"].result(timeout=RESULT_TIMEOUT_SECONDS)
    return results


def delay_additions(count: int) -> dict[str, Any]:
    return {"ids": [str(add.delay(number, 1).task_run_id) for number in range(count)]}


def timed_additions(count: int, *, within_seconds: float = 900) -> dict[str, Any]:
    """Delay `count` additions, wait for every result; the seconds each part took."""
    began = time.monotonic()
    futures = [add.delay(number, 1) for number in range(count)]
    delayed = time.monotonic()
    deadline = delayed + within_seconds
    completed = 0
    for number, future in enumerate(futures):
        try:
            if future.result(timeout=max(0.1, deadline - time.monotonic())) == number + 1:
                completed += 1
        except TimeoutError:
            break
    return {
        "tasks": count,
        "completed": completed,
        "delay_seconds": round(delayed - began, 3),
        "total_seconds": round(time.monotonic() - began, 3),
        "cpu_seconds": round(time.process_time(), 3),
    }


def main(command: str, *arguments: str) -> dict[str, Any]:
    if command == "life":
        return life()
    count = int(arguments[0])
    return delay_additions(count) if command == "add" else timed_additions(count)


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])), flush=True)  # noqa: T201

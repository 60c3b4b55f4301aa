"""The delay side: `python -m tests.compat.background.delay life|add N|timed N|latency N`.

`life` delays one run of each task, waits for each result, runs the tagged task in this
process too, and prints the results with the delayed runs' ids as JSON. `add N` delays N
additions without waiting and prints their ids. `timed N` delays N additions, waits for
every result, and prints how long each part took, its CPU time and how long it waited for
the service's HTTP answers. `latency N` delays one addition and waits for its result, N
times in turn, and prints how long each took.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prefect.futures import PrefectDistributedFuture

from tests.compat.background.tasks import add, fail, flaky, tagged_add

RESULT_TIMEOUT_SECONDS = 60


def life() -> dict[str, Any]:
    marker = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "flaky-marker"
    futures: dict[str, PrefectDistributedFuture[Any]] = {
        "add": add.delay(1, 2),
        "fail": fail.delay(7),
        "flaky": flaky.delay(str(marker)),
        "tagged": tagged_add.delay(2, 3),
    }
    results: dict[str, Any] = {"ids": {name: str(f.task_run_id) for name, f in futures.items()}}
    results["add"] = futures["add"].result(timeout=RESULT_TIMEOUT_SECONDS)
    try:
        futures["fail"].result(timeout=RESULT_TIMEOUT_SECONDS)
    except ValueError as raised:
        results["fail"] = f"{type(raised).__name__}: {raised}"
    results["flaky"] = futures["flaky"].result(timeout=RESULT_TIMEOUT_SECONDS)
    results["tagged"] = futures["tagged"].result(timeout=RESULT_TIMEOUT_SECONDS)
    # Run here, in this process, reported to the service as events.
    results["tagged_here"] = tagged_add(4, 5)
    return results


def delay_additions(count: int) -> dict[str, Any]:
    return {"ids": [str(add.delay(number, 1).task_run_id) for number in range(count)]}


class ServiceWaits:
    """How long Prefect's client waited for the service's HTTP answers, by kind of request
    (from sending the request to the answer's headers, connecting included; the answers
    are small and arrive with them).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.requests: Counter[str] = Counter()

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count every request Prefect's client sends while the block runs."""
        original = httpx.AsyncHTTPTransport.handle_async_request

        async def timed(
            transport: httpx.AsyncHTTPTransport, request: httpx.Request
        ) -> httpx.Response:
            began = time.monotonic()
            try:
                return await original(transport, request)
            finally:
                kind = request_kind(request.method, request.url.path)
                self.seconds[kind] = self.seconds.get(kind, 0.0) + time.monotonic() - began
                self.requests[kind] += 1

        httpx.AsyncHTTPTransport.handle_async_request = timed  # type: ignore[assignment,method-assign]
        try:
            yield
        finally:
            httpx.AsyncHTTPTransport.handle_async_request = original  # type: ignore[method-assign]


def request_kind(method: str, path: str) -> str:
    """The operation a request of Prefect's client is, in a word."""
    if path.endswith("/task_runs/") and method == "POST":
        return "create"
    if "/task_runs/" in path and method == "GET":
        return "read"
    if path.endswith("/csrf-token"):
        return "csrf-token"
    return "other"


def timed_additions(count: int, *, within_seconds: float = 900) -> dict[str, Any]:
    """Delay `count` additions, wait for every result; the seconds each part took, the CPU
    seconds this process used meanwhile, and the seconds it waited for the service.
    """
    waits = ServiceWaits()
    cpu_before = time.process_time()
    began = time.monotonic()
    with waits.counting():
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
        "cpu_seconds": round(time.process_time() - cpu_before, 3),
        "service_wait_seconds": {kind: round(s, 3) for kind, s in waits.seconds.items()},
        "requests": dict(waits.requests),
    }


def round_trips(count: int) -> dict[str, Any]:
    """Delay one addition and wait for its result, `count` times in turn; the milliseconds
    each took (after a first one that opens the client's sockets).
    """
    add.delay(0, 1).result(timeout=RESULT_TIMEOUT_SECONDS)
    milliseconds = []
    for number in range(count):
        began = time.monotonic()
        if add.delay(number, 1).result(timeout=RESULT_TIMEOUT_SECONDS) != number + 1:
            raise RuntimeError(f"a wrong result for task {number}")
        milliseconds.append(round((time.monotonic() - began) * 1000, 1))
    return {"round_trip_ms": milliseconds, "median_ms": statistics.median(milliseconds)}


def main(command: str, *arguments: str) -> dict[str, Any]:
    if command == "life":
        return life()
    count = int(arguments[0])
    if command == "add":
        return delay_additions(count)
    if command == "latency":
        return round_trips(count)
    return timed_additions(count)


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])), flush=True)  # noqa: T201

"""The delay side: `python -m tests.compat.background.delay life|add N`.

`life` delays one run of each task, waits for each result, and prints them with the runs'
ids as JSON. `add N` delays N additions without waiting and prints their ids.
"""

from __future__ import annotations

import json
import os
import sys
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


if __name__ == "__main__":
    command = sys.argv[1]
    output = life() if command == "life" else delay_additions(int(sys.argv[2]))
    print(json.dumps(output), flush=True)  # noqa: T201

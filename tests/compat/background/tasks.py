"""The background tasks of the tests; the delay side and the worker import the same code, so
that their task keys (a hash of the code) agree.
"""

from __future__ import annotations

from pathlib import Path

from prefect.tasks import task


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def fail(x: int) -> int:
    raise ValueError(f"fail failed for {x}")


@task(retries=1, retry_delay_seconds=1)
def flaky(marker: str) -> str:
    """Fails the first time for a marker file that does not exist yet, then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("the first try fails")
    return "succeeded on the retry"


@task(tags=["etl"])
def tagged_add(x: int, y: int) -> int:
    """Prefect's engine asks for a concurrency slot of each tag before it runs this."""
    return x + y


TASKS = (add, fail, flaky, tagged_add)

"""Task runs made for the set_state cells before they are measured, their ids in a file that
the cell's wrk script reads.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench.servers import OURS, PREFECT, Server

# Runs the set_state_start cell may need per second of a cell, above what each server was
# seen to manage; should a cell still run out, its wrk script reuses runs and says how many.
START_POOL_RUNS_PER_SECOND = {OURS: 3000, PREFECT: 300}
# Runs the set_state_cycle cell goes round: enough that concurrent proposals rarely meet on
# one run, even at concurrency 64.
CYCLE_POOL_RUNS = 256


def start_pool_size(system: str, seconds: int) -> int:
    """How many fresh runs a set_state_start cell of `seconds` gets."""
    return START_POOL_RUNS_PER_SECOND[system] * seconds


def write_run_pool(server: Server, count: int, path: Path) -> Path:
    """Make `count` PENDING runs on `server` and write their ids to `path`, one per line."""
    ids = server.create_pending_runs(count)
    if len(ids) != count:
        raise RuntimeError(f"{server.system} made {len(ids)} of the {count} runs asked for")
    path.write_text("\n".join(ids) + "\n")
    return path

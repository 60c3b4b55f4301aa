"""`make fuzz`: a long Schemathesis run (its own CLI) against the service as a real process.

    python -m tests.fuzz --examples 1000                  # a fresh SQLite file
    python -m tests.fuzz --backend postgresql             # a throw-away database on
                                                          #   $TEST_POSTGRES_URL's server
The pytest suite runs Schemathesis in-process on every change; this run goes through uvicorn
and HTTP, with more examples, and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.databases import empty_database
from tests.support.server import running_server

SPEC = Path(__file__).resolve().parents[1] / "openapi.yaml"
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def main() -> int:
    """Serve the API, fuzz it, report; the exit code is Schemathesis's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="per operation and phase")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, help="repeat an earlier run")
    arguments = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as directory,
        empty_database(arguments.backend, Path(directory)) as database_url,
        running_server(database_url) as server,
    ):
        # --config-file belongs to schemathesis itself, before the subcommand.
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(CONFIG),
            "run", str(SPEC),
            "--url", server.api_url,
            "--max-examples", str(arguments.examples),
        ]  # fmt: skip
        if arguments.seed is not None:
            command += ["--seed", str(arguments.seed)]
        print("$", " ".join(command), flush=True)  # noqa: T201
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

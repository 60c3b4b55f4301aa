"""The service as a runtime-only install has it: without the packages of the dev extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_starting_without_httpx2_prints_no_warning(tmp_path: Path) -> None:
    # httpx2 comes with the dev extra only; hide it as a runtime install lacks it.
    (tmp_path / "httpx2.py").write_text('raise ModuleNotFoundError("absent", name="httpx2")\n')
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    started = subprocess.run(
        [sys.executable, "-c", "import app.main, starlette.testclient"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (started.returncode, started.stderr) == (0, "")

"""`make fuzz` as an operator runs it: Schemathesis's own CLI against a served process.

The pytest suite fuzzes in process, so only this test shows that the command line the
long run builds is one Schemathesis accepts and that it generates and passes cases.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"(\d+) generated, (\d+) passed")


def test_one_example_per_operation_runs_every_phase_and_passes() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--examples", "1", "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    summary = SUMMARY.search(output)
    assert summary is not None, output[-3000:]
    generated, passed = int(summary[1]), int(summary[2])
    assert generated > 0
    assert passed == generated
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-3000:]
    assert "Warnings:" not in output, output[-3000:]

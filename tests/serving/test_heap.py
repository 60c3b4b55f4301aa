"""A served worker leaves the objects start-up built out of later garbage collections.

uvicorn loads `app.main:app` by attribute; `create_app`, which the tests call for every app
they build, leaves the collector as it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json
import app.main
from app.main import create_app
create_app()
built = gc.get_freeze_count()
app.main.app
print(json.dumps({"after_create_app": built, "after_serving_import": gc.get_freeze_count()}))
"""


def test_the_served_app_freezes_what_start_up_built(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'heap.db'}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    counts = json.loads(completed.stdout.strip().splitlines()[-1])

    assert counts["after_create_app"] == 0
    # The modules, the document and the app: far more than any one request makes.
    assert counts["after_serving_import"] > 50_000

"""Isolates Prefect's client: its home is a directory of this test run, never ~/.prefect.

Prefect reads PREFECT_HOME once, when `prefect` is first imported, and creates that directory
then; so it is set here, before pytest imports the test modules of this directory. Which server
the client talks to is set per test (`tests.compat.test_prefect_client.prefect_client`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

PREFECT_HOME = tempfile.mkdtemp(prefix="taskrun-api-prefect-home-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)

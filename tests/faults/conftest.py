"""Every test here runs the service as a real process and does something hostile to it."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of this directory `faults` (`pytest -m faults` runs them alone)."""
    for item in items:
        if item.path.parent.name == "faults":
            item.add_marker(pytest.mark.faults)

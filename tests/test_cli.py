"""The `taskrun-api` command: its version, and `python -m app`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import app

REPOSITORY = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "taskrun-api")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPOSITORY)


class TestVersion:
    @pytest.mark.parametrize(
        "command", [[CONSOLE_SCRIPT], [sys.executable, "-m", "app"]], ids=["script", "module"]
    )
    def test_prints_the_package_version(self, command: list[str]) -> None:
        result = run(*command, "--version")

        assert result.returncode == 0, result.stderr
        assert result.stdout == f"taskrun-api {app.__version__}\n"

    def test_the_version_is_written_once(self) -> None:
        project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]

        assert "version" not in project
        assert project["dynamic"] == ["version"]
        assert version("taskrun-api") == app.__version__


class TestModule:
    def test_python_m_app_runs_the_command(self) -> None:
        result = run(sys.executable, "-m", "app", "--help")

        assert result.returncode == 0, result.stderr
        assert "usage: taskrun-api" in result.stdout
        assert "serve" in result.stdout

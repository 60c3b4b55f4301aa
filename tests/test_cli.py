"""The `taskrun-api` command: its version, `python -m app`, and the settings it starts with."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

import app
from app import cli, main
from app.contract import api
from app.contract.api import MissingHandlers
from app.db.database import Database
from app.db.migrate import alembic_config, head_revision, upgrade
from app.main import create_app, database_of, handler_groups
from app.services.event_retention import delete_a_batch
from app.settings import MAX_EVENT_RETENTION_SECONDS, MAX_TIMEOUT_SECONDS, Settings
from generated.routes import HANDLERS
from tests.support.databases import empty_database

REPOSITORY = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "taskrun-api")


def run(
    *command: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
        env={**os.environ, **(environment or {})},
    )


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


# Every setting a timeout or a duration reaches, and the most each one may be.
BOUNDED_SETTINGS = {
    "GRACEFUL_SHUTDOWN_SECONDS": MAX_TIMEOUT_SECONDS,
    "REQUEST_HEADER_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "REQUEST_BODY_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "DATABASE_STATEMENT_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "DATABASE_LOCK_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "WORKER_STARTUP_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "WORKER_HEALTHCHECK_TIMEOUT": MAX_TIMEOUT_SECONDS,
    "EVENT_RETENTION_SECONDS": MAX_EVENT_RETENTION_SECONDS,
}


class TestSettings:
    @pytest.mark.parametrize("name", BOUNDED_SETTINGS)
    @pytest.mark.parametrize("value", ["inf", "nan", "1e12", "just-over"])
    def test_a_duration_past_its_bound_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        if value == "just-over":
            value = str(int(BOUNDED_SETTINGS[name]) + 1)
        monkeypatch.setenv(name, value)

        with pytest.raises(ValidationError, match=name.lower()) as refused:
            Settings()

        if value in ("inf", "nan"):
            assert refused.value.errors()[0]["msg"] == "Input should be a finite number"

    @pytest.mark.parametrize("name", BOUNDED_SETTINGS)
    def test_a_duration_may_have_a_fraction(self, name: str) -> None:
        result = run(CONSOLE_SCRIPT, "check-handlers", environment={name: "1.5"})

        assert (result.returncode, result.stderr) == (0, "")

    def test_every_use_takes_the_longest_durations(self, backend: str, tmp_path: Path) -> None:
        with empty_database(backend, tmp_path) as url:
            upgrade(url)
            longest = {name.lower(): bound for name, bound in BOUNDED_SETTINGS.items()}
            settings = Settings.model_validate({"database_url": url, **longest})
            application = create_app(settings)
            try:
                with application.test_client() as client:
                    created = client.post(
                        "/api/task_runs/", json={"task_key": "t", "dynamic_key": "0"}
                    )
                    assert created.status_code == 201, created.text
                    retention = timedelta(seconds=settings.event_retention_seconds)
                    assert delete_a_batch(database_of(application), retention=retention) == 0
            finally:
                database_of(application).dispose()

    @staticmethod
    def with_a_bad_setting(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
        """`check-handlers` run with a lock timeout the settings refuse."""
        return run(
            CONSOLE_SCRIPT,
            "check-handlers",
            environment={
                "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                "DATABASE_LOCK_TIMEOUT": "inf",
                **environment,
            },
        )

    def test_the_command_refuses_to_start_with_a_bad_setting(self, tmp_path: Path) -> None:
        result = self.with_a_bad_setting(tmp_path)

        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(
            "taskrun-api: error: invalid settings: DATABASE_LOCK_TIMEOUT: "
        )
        assert result.stderr.count("\n") == 1

    @pytest.mark.parametrize("log_format", ["json", "JSON"])
    def test_the_refusal_is_a_json_line_when_the_logs_are(
        self, tmp_path: Path, log_format: str
    ) -> None:
        result = self.with_a_bad_setting(tmp_path, LOG_FORMAT=log_format)

        assert (result.returncode, result.stdout) == (1, "")
        [line] = result.stderr.splitlines()
        refusal = json.loads(line)
        assert refusal["level"] == "ERROR"
        assert refusal["logger"] == "app.cli"
        assert refusal["message"].startswith(
            "taskrun-api: error: invalid settings: DATABASE_LOCK_TIMEOUT: "
        )
        assert datetime.fromisoformat(refusal["time"]).tzinfo is not None


class TestStartupErrors:
    """What the service cannot start with ends the command with one line and status 1."""

    @pytest.mark.parametrize(
        ("environment", "message"),
        [
            ({"PORT": "abc"}, "invalid settings: PORT: Input should be a valid integer"),
            (
                {"HOST": ""},
                "invalid settings: HOST: Value error, must not be empty: an empty host would mean"
                " every interface; give 0.0.0.0 for that",
            ),
            (
                {"DATABASE_STATEMENT_TIMEOUT": "nan"},
                "invalid settings: DATABASE_STATEMENT_TIMEOUT: Input should be a finite number"
                " (got 'nan')",
            ),
            (
                {"GRACEFUL_SHUTDOWN_SECONDS": "inf"},
                "invalid settings: GRACEFUL_SHUTDOWN_SECONDS: Input should be a finite number",
            ),
            (
                {"DATABASE_URL": "mysql://user:s3cr3t@host/db"},
                "invalid settings: DATABASE_URL: Value error, must start with one of sqlite://",
            ),
            (
                {"DATABASE_URL": "postgresql://user:s3cr3t@127.0.0.1:1/nowhere"},
                "the database cannot be used: OperationalError: connection failed:",
            ),
            (
                {"DATABASE_URL": "sqlite://"},
                "DATABASE_URL names an in-memory SQLite database",
            ),
            # No database name: libpq connects to the user's database, which is no memory.
            (
                {"DATABASE_URL": "postgresql://user:s3cr3t@127.0.0.1:1"},
                "the database cannot be used: OperationalError: connection failed:",
            ),
        ],
        ids=[
            "port",
            "host",
            "nan",
            "inf",
            "scheme",
            "refused",
            "in-memory",
            "no-database-name",
        ],
    )
    def test_serve_refuses_with_one_line(self, environment: dict[str, str], message: str) -> None:
        result = run(CONSOLE_SCRIPT, "serve", environment=environment)

        assert result.returncode == 1
        error_lines = [line for line in result.stderr.splitlines() if " - " not in line]
        assert error_lines == [error_lines[0]]
        assert error_lines[0].startswith(f"taskrun-api: error: {message}"), result.stderr
        assert "s3cr3t" not in result.stderr

    @pytest.mark.parametrize(
        ("flag", "message"),
        [
            ("--workers=0", "argument --workers: 0 is not 1 or more"),
            ("--port=99999", "argument --port: 99999 is not a port (0 to 65535)"),
        ],
    )
    def test_serve_refuses_flags_out_of_bounds(self, flag: str, message: str) -> None:
        result = run(CONSOLE_SCRIPT, "serve", flag)

        assert result.returncode == 2
        assert message in result.stderr

    @pytest.mark.parametrize("workers", ["1", "2"])
    def test_a_port_in_use_is_one_line_before_the_migration(
        self, tmp_path: Path, workers: str
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]

            result = run(
                CONSOLE_SCRIPT, "serve", "--host", "127.0.0.1", "--port", str(port),
                "--workers", workers,
                environment={"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
            )  # fmt: skip

        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"taskrun-api: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        )
        assert not (tmp_path / "x.db").exists()

    def test_an_unknown_revision_is_one_line(self, tmp_path: Path) -> None:
        environment = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}

        result = run(CONSOLE_SCRIPT, "db", "upgrade", "nonsense", environment=environment)

        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "taskrun-api: error: Can't locate revision identified by 'nonsense'"
        )
        assert "Traceback" not in result.stderr

    def test_a_metrics_directory_holding_other_files_is_refused_and_left_alone(
        self, tmp_path: Path
    ) -> None:
        database = tmp_path / "taskrun.db"
        database.write_bytes(b"the operator's data")
        (tmp_path / "counter_123.db").write_bytes(b"an earlier run's metrics")
        environment = {
            "DATABASE_URL": f"sqlite:///{database}",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }

        result = run(CONSOLE_SCRIPT, "serve", "--no-migrate", environment=environment)

        assert result.returncode == 1
        assert "holds files that are not prometheus-client's: taskrun.db" in result.stderr
        assert database.read_bytes() == b"the operator's data"

    def test_a_file_that_is_not_a_database_is_one_line(self, tmp_path: Path) -> None:
        database = tmp_path / "taskrun.db"
        database.write_bytes(b"not a database" * 100)

        result = run(CONSOLE_SCRIPT, "serve", environment={"DATABASE_URL": f"sqlite:///{database}"})

        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "taskrun-api: error: the database cannot be used: DatabaseError: file is not a database"
        )

    def test_a_metrics_directory_that_does_not_exist_yet_is_made(self, tmp_path: Path) -> None:
        directory = tmp_path / "metrics" / "new"

        result = run(
            CONSOLE_SCRIPT, "--version", environment={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
        )

        assert result.returncode == 0, result.stderr
        assert directory.is_dir()

    @pytest.mark.parametrize(
        ("kind", "reason"),
        [
            ("file", "Not a directory"),
            ("not-makeable", "No such file or directory"),
            # /sys takes no new files, even from root (who may write in any mode 0o555 one).
            ("not-writable", ""),
        ],
    )
    @pytest.mark.parametrize("arguments", [["--version"], ["serve"]], ids=["version", "serve"])
    def test_a_metrics_directory_that_cannot_be_used_is_one_line(
        self, tmp_path: Path, kind: str, reason: str, arguments: list[str]
    ) -> None:
        a_file = tmp_path / "metrics"
        a_file.write_text("")
        directory = {"file": str(a_file), "not-makeable": "/proc/metrics", "not-writable": "/sys"}

        result = run(
            CONSOLE_SCRIPT,
            *arguments,
            environment={
                "PROMETHEUS_MULTIPROC_DIR": directory[kind],
                "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            },
        )

        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(
            f"taskrun-api: error: PROMETHEUS_MULTIPROC_DIR ({directory[kind]}) cannot be used as"
            f" the metrics' directory: {reason}"
        ), result.stderr
        assert result.stderr.count("\n") == 1
        assert not (tmp_path / "x.db").exists()


class TestDatabaseCommands:
    def test_upgrade_logs_each_migration_and_current_names_the_revision(
        self, tmp_path: Path
    ) -> None:
        environment = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
        head = head_revision()

        before = run(CONSOLE_SCRIPT, "db", "current", environment=environment)
        upgraded = run(CONSOLE_SCRIPT, "db", "upgrade", environment=environment)
        after = run(CONSOLE_SCRIPT, "db", "current", environment=environment)

        assert before.stdout == f"no revision (an empty database); the newest is {head}\n"
        assert upgraded.returncode == 0
        assert f"Running upgrade  -> {first_revision()}" in upgraded.stderr
        assert f"-> {head}," in upgraded.stderr
        assert after.stdout == f"{head} (the newest)\n"

    def test_a_password_in_the_query_is_not_logged(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'x.db'}?password=s3cr3t"

        result = run(CONSOLE_SCRIPT, "db", "upgrade", environment={"DATABASE_URL": url})

        assert "migrating sqlite:///" in result.stderr
        assert "s3cr3t" not in result.stderr


def first_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config(""))
    return str(script.get_base())


def handlers_without(group: str) -> Callable[[Database, Settings], dict[str, object]]:
    """app.main.handler_groups, but without one group: as after a new tag in openapi.yaml."""

    def groups(database: Database, settings: Settings) -> dict[str, object]:
        every_group: dict[str, object] = dict(handler_groups(database, settings))
        del every_group[group]
        return every_group

    return groups


class TestCheckHandlers:
    def test_every_operation_of_the_document_has_its_handler(self) -> None:
        result = run(CONSOLE_SCRIPT, "check-handlers")

        assert (result.returncode, result.stderr) == (0, "")

    def test_a_missing_handler_group_is_named_with_each_of_its_operations(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(cli, "handler_groups", handlers_without("admin"))

        assert cli.main(["check-handlers"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "taskrun-api: error: missing handler group: admin (AdminOperations, the operations"
            ' tagged "Admin")',
            "taskrun-api: error: missing handler: read_server_version_admin_version_get:"
            " admin.read_server_version",
        ]

    def test_route_stubs_of_another_version_of_the_document_are_named(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        stubs = dict(HANDLERS)
        del stubs["read_task_run_task_runs__id__get"]
        stubs["archive_task_run_task_runs__id__put"] = ("task_runs", "archive_task_run")
        monkeypatch.setattr(api, "HANDLERS", stubs)

        assert cli.main(["check-handlers"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "taskrun-api: error: no route stub for read_task_run_task_runs__id__get of"
            " openapi.yaml: run `make generate`",
            "taskrun-api: error: a route stub for archive_task_run_task_runs__id__put, which"
            " openapi.yaml no longer has: run `make generate`",
        ]

    def test_serve_names_what_is_missing_and_starts_no_worker(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        monkeypatch.setattr(cli, "handler_groups", handlers_without("admin"))
        monkeypatch.setattr(cli, "run", pytest.fail)
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")

        assert cli.main(["serve"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "taskrun-api: error: missing handler group: admin (AdminOperations, the operations"
            ' tagged "Admin")',
            "taskrun-api: error: missing handler: read_server_version_admin_version_get:"
            " admin.read_server_version",
        ]
        assert not (tmp_path / "x.db").exists()  # not even migrated

    def test_the_service_does_not_start_without_a_handler_group(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setattr(main, "handler_groups", handlers_without("task_run_states"))
        settings = Settings.model_validate({"database_url": f"sqlite:///{tmp_path / 'x.db'}"})

        with pytest.raises(MissingHandlers, match="missing handler group: task_run_states "):
            main.create_routes(Database(settings.database_url), settings)


def test_a_worker_that_cannot_build_the_application_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing() -> None:
        raise OSError("too many open files")

    monkeypatch.setattr(main, "create_app", failing)
    monkeypatch.setattr(main, "_app", None)

    with pytest.raises(SystemExit) as stopped:
        _ = main.app

    assert stopped.value.code == STARTUP_FAILURE  # the supervisor stops instead of restarting
    assert "the application could not be created" in caplog.text

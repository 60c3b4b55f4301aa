"""The service's settings, read once from the environment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """An SQLite file in the working directory: `make run` needs nothing else."""
    return f"sqlite:///{Path.cwd() / 'taskrun.db'}"


# The longest timeout (seconds) that every use of one can take, about 24.8 days: PostgreSQL's
# lock_timeout and statement_timeout, and SQLite's busy timeout, are milliseconds in a 32-bit
# integer; asyncio, uvloop and threading.Lock.acquire take far longer ones.
MAX_TIMEOUT_SECONDS = (2**31 - 1) // 1000
# The longest event retention (seconds), 1000 years: now less the retention is still a date
# (of the year 1000 or later) that a datetime holds and both databases store.
MAX_EVENT_RETENTION_SECONDS = 1000 * 365 * 24 * 3600.0

# The databases the service runs on (the PostgreSQL forms all mean the psycopg driver).
DATABASE_URL_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")

# A timeout in seconds; `inf`, NaN and longer ones are refused at start, not on first use.
TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]


class Settings(BaseSettings):
    """Configuration from environment variables (see the README for each one)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    # An address to listen on; empty is refused (uvicorn would listen on every interface).
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 4200
    workers: Annotated[int, Field(ge=1)] = 2
    log_level: str = "INFO"
    # "text" for people, "json" for log collectors: one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    # One line per request: method, path, operationId, status, duration, request id.
    access_log: bool = True
    metrics_enabled: bool = True
    # Comma-separated, as Prefect's server reads them ("*": any); no origins: no CORS.
    cors_allowed_origins: str = Field(
        default="*",
        validation_alias=AliasChoices(
            "CORS_ALLOWED_ORIGINS", "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"
        ),
    )
    cors_allowed_methods: str = Field(
        default="*",
        validation_alias=AliasChoices(
            "CORS_ALLOWED_METHODS", "PREFECT_SERVER_API_CORS_ALLOWED_METHODS"
        ),
    )
    cors_allowed_headers: str = Field(
        default="*",
        validation_alias=AliasChoices(
            "CORS_ALLOWED_HEADERS", "PREFECT_SERVER_API_CORS_ALLOWED_HEADERS"
        ),
    )
    # On SIGTERM, requests in flight get this long to finish before they are cancelled.
    graceful_shutdown_seconds: Annotated[
        float, Field(ge=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)
    ] = 20.0
    # Threads per worker process that run the handlers, and database connections for them:
    # a thread holds one connection at a time, so more connections than threads (of both
    # kinds) sit idle.
    threads_per_worker: Annotated[int, Field(ge=1)] = 10
    # Threads per worker process that run the reads (GET), apart from the writes.
    read_threads_per_worker: Annotated[int, Field(ge=1)] = 2
    database_pool_size: Annotated[int, Field(ge=1)] = 12
    max_request_body_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    # Bytes of request bodies one worker holds at a time (stalled uploads included); a body
    # that would go past it is answered with 503.
    max_buffered_body_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    # Clients that send too slowly, or too much before the body, are cut off (seconds, bytes).
    request_header_timeout: TimeoutSeconds = 20.0
    request_body_timeout: TimeoutSeconds = 20.0
    max_request_header_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024
    max_request_headers: Annotated[int, Field(ge=8)] = 100
    # How long a statement may run and a write may wait for a lock (seconds). The statement
    # timeout is PostgreSQL's statement_timeout; the lock timeout is its lock_timeout and,
    # on SQLite, how long a writer waits for its turn.
    database_statement_timeout: TimeoutSeconds = 30.0
    database_lock_timeout: TimeoutSeconds = 10.0
    # Worker supervision (seconds): how long a new worker may take to answer the supervisor's
    # first ping, and each one after it, before it is replaced.
    worker_startup_timeout: TimeoutSeconds = 120.0
    worker_healthcheck_timeout: TimeoutSeconds = 10.0
    # Responses are checked against openapi.yaml in the tests; in production that costs CPU.
    validate_responses: bool = False
    # Events received longer ago than this are deleted (seconds; Prefect's server keeps
    # them 7 days too).
    event_retention_seconds: Annotated[
        float, Field(gt=0, le=MAX_EVENT_RETENTION_SECONDS, allow_inf_nan=False)
    ] = 7 * 24 * 3600.0
    # "user:password" for HTTP Basic authentication; unset: no authentication. Prefect's
    # server reads the same from PREFECT_SERVER_API_AUTH_STRING, which is honoured too.
    api_auth_string: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"),
    )
    # The Prefect server version whose behaviour is served; clients check its major version.
    prefect_server_version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")] = "3.9.1"

    @field_validator("database_url")
    @classmethod
    def _a_supported_database(cls, value: str) -> str:
        if not value.startswith(DATABASE_URL_SCHEMES):
            raise ValueError(
                f"must start with one of {', '.join(DATABASE_URL_SCHEMES)}"
                " (sqlite:///path or postgresql://user:password@host:port/database)"
            )
        return value

    @field_validator("host")
    @classmethod
    def _not_every_interface_by_mistake(cls, value: str) -> str:
        if not value:
            raise ValueError(
                "must not be empty: an empty host would mean every interface; give 0.0.0.0 for that"
            )
        return value

    @field_validator("api_auth_string")
    @classmethod
    def _empty_means_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value and value.get_secret_value() else None

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case_log_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        name = value.upper()
        if name not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return name


def comma_separated(value: str) -> list[str]:
    """The non-empty items of a comma-separated setting."""
    return [item.strip() for item in value.split(",") if item.strip()]

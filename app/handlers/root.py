"""Handlers of the Root and Admin operations: what a Prefect client asks a server first."""

from __future__ import annotations

from typing import Literal, NoReturn

from app.db.database import Database
from app.services.errors import Unprocessable
from app.services.readiness import check_readiness
from generated import models

CSRF_DISABLED = "CSRF protection is disabled."


class RootHandlers:
    """The operations tagged "Root": health, readiness, the API version, a greeting, CSRF."""

    def __init__(self, *, api_version: str, database: Database, schema_head: str) -> None:
        self._api_version = api_version
        self._database = database
        self._schema_head = schema_head

    def health_check(self) -> tuple[bool, Literal[200]]:
        """The service is up (liveness only: it answers without touching the database)."""
        return True, 200

    def perform_readiness_check(self) -> tuple[models.ReadinessMessage, Literal[200]]:
        """The database answers and is migrated (else NotReady, answered with 503)."""
        message = check_readiness(database=self._database, schema_head=self._schema_head)
        return models.ReadinessMessage(message=message), 200

    def server_version(self) -> tuple[str, Literal[200]]:
        """The Prefect REST API version served."""
        return self._api_version, 200

    def hello(self) -> tuple[str, Literal[200]]:
        """A greeting, as Prefect's server gives."""
        return "👋", 200

    def create_csrf_token(self, *, client: str) -> NoReturn:  # noqa: ARG002 - the contract's
        """No tokens: the answer Prefect's clients read as "go on without CSRF"."""
        raise Unprocessable(CSRF_DISABLED)


class AdminHandlers:
    """The operations tagged "Admin"."""

    def __init__(self, *, server_version: str) -> None:
        self._server_version = server_version

    def read_server_version(self) -> tuple[str, Literal[200]]:
        """The version of Prefect's server whose behaviour is served."""
        return self._server_version, 200

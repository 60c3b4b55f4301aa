"""Handlers of the Root and Admin operations: what a Prefect client asks a server first."""

from __future__ import annotations

from typing import Literal, NoReturn

from app.services.errors import Unprocessable

CSRF_DISABLED = "CSRF protection is disabled."


class RootHandlers:
    """The operations tagged "Root": health, the API version, a greeting, CSRF tokens."""

    def __init__(self, *, api_version: str) -> None:
        self._api_version = api_version

    def health_check(self) -> tuple[bool, Literal[200]]:
        """The service is up (liveness only: it answers without touching the database)."""
        return True, 200

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

"""Errors the domain raises; app/contract maps each of them to one HTTP status."""


class DomainError(Exception):
    """Base class: the message is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """The requested object does not exist."""


class Conflict(DomainError):
    """The request collides with data that already exists."""


class Unprocessable(DomainError):
    """The request is well formed but the service will not carry it out."""


class NotReady(DomainError):
    """The service cannot serve requests now (its database is unavailable or not migrated)."""

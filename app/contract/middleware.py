"""ASGI middleware for checks that apply to every request, ahead of validation."""

from __future__ import annotations

import base64
import hmac
import json
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_VERSION_HEADER = "x-prefect-api-version"
MINIMUM_API_VERSION = (0, 8, 0)
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")


class InvalidApiVersion(Exception):
    """The x-prefect-api-version header is malformed or too old; answered with 400."""


class RequestTooLarge(Exception):
    """The request body exceeds the configured limit; answered with 413."""


class Unauthorized(Exception):
    """Credentials are required and were missing or wrong; answered with 401."""


def check_api_version(value: str) -> None:
    """Accept an absent or empty header, or a version of 0.8.0 or newer, as Prefect does.

    :raises InvalidApiVersion: with the message Prefect's server gives.
    """
    if not value:
        return
    match = _VERSION.fullmatch(value)
    if match is None:
        raise InvalidApiVersion(
            "Invalid X-PREFECT-API-VERSION header format."
            f"Expected header in format 'x.y.z' but received {value}"
        )
    if tuple(int(part) for part in match.groups()) < MINIMUM_API_VERSION:
        minimum = ".".join(map(str, MINIMUM_API_VERSION))
        raise InvalidApiVersion(
            f"The request specified API version {value} but this server requires version "
            f"{minimum} or higher."
        )


class ApiVersionMiddleware:
    """Checks the x-prefect-api-version header before the request is validated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            check_api_version(Headers(scope=scope).get(API_VERSION_HEADER, ""))
        await self.app(scope, receive, send)


class BasicAuthMiddleware:
    """Requires HTTP Basic credentials equal to `credentials` ("user:password") on every path
    but `exempt_paths`, as Prefect's server does with PREFECT_SERVER_API_AUTH_STRING.
    """

    def __init__(self, app: ASGIApp, *, credentials: str, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = b"Basic " + base64.b64encode(credentials.encode())
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exempt_paths:
            supplied = next(
                (value for name, value in scope["headers"] if name == b"authorization"), b""
            )
            # Constant time: how much of a guess matched must not show in the response time.
            if not hmac.compare_digest(supplied, self.expected):
                raise Unauthorized("Unauthorized")
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Refuses request bodies larger than `max_bytes`, by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise RequestTooLarge(self._message())
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."


class LineBreakPathMiddleware:
    """Answers 404 for paths holding a line break, before any routing.

    Connexion's router does not match such a path (its patterns stop at a newline) while
    Flask's does, so without this the handler would run without Connexion's validation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\n" in scope["path"] or "\r" in scope["path"]):
            body = json.dumps({"detail": "Not Found"}, separators=(",", ":")).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class PathTemplate:
    """A path of the document (`/api/task_runs/{id}`) as a pattern, with its methods."""

    def __init__(self, template: str, methods: frozenset[str]) -> None:
        segments = template.split("/")
        self.pattern = re.compile(
            "/".join("[^/]+" if _is_parameter(s) else re.escape(s) for s in segments)
        )
        # Of two templates that match a path, the one with more literal segments is the
        # path's own (`/task_runs/filter` rather than `/task_runs/{id}`).
        self.literal_segments = sum(not _is_parameter(s) for s in segments)
        self.allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        self.methods = frozenset(self.allow.split(", "))


def _is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


class MethodNotAllowedMiddleware:
    """Answers 405 when the document has the request's path but not its method, with every
    method of that path in `Allow`.

    Connexion routes each operation separately, so its own 405 lists only the methods of one
    of them.
    """

    def __init__(self, app: ASGIApp, *, methods_by_path: dict[str, frozenset[str]]) -> None:
        self.app = app
        self.templates = sorted(
            (PathTemplate(path, methods) for path, methods in methods_by_path.items()),
            key=lambda template: -template.literal_segments,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            template = next((t for t in self.templates if t.pattern.fullmatch(scope["path"])), None)
            if template is not None and scope["method"] not in template.methods:
                raise MethodNotAllowed(template.allow)
        await self.app(scope, receive, send)


class MethodNotAllowed(Exception):
    """The path exists but not with this method; answered with 405 and `Allow`."""

    def __init__(self, allow: str) -> None:
        super().__init__("Method Not Allowed")
        self.allow = allow

"""ASGI middleware for checks that apply to every request, ahead of validation."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass, replace

from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_VERSION_HEADER = "x-prefect-api-version"
MINIMUM_API_VERSION = (0, 8, 0)
# Longer values are refused before they are read as numbers (openapi.yaml: maxLength).
MAX_API_VERSION_LENGTH = 64
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")


class InvalidApiVersion(Exception):
    """The x-prefect-api-version header is malformed or too old; answered with 400."""


class RequestTooLarge(Exception):
    """The request body exceeds the configured limit; answered with 413."""


class RequestBodyTimeout(Exception):
    """The request body stopped arriving for longer than the body timeout; answered with 408."""


class ClientDisconnected(Exception):
    """The client left before its request body was whole: the request is not acted on."""


class TooManyUnfinishedBodies(Exception):
    """This worker holds as many bytes of unfinished request bodies as it may; answered 503."""


class Unauthorized(Exception):
    """Credentials are required and were missing or wrong; answered with 401."""


def check_api_version(value: str) -> None:
    """Accept an absent or empty header, or a version of 0.8.0 or newer, as Prefect does.

    :raises InvalidApiVersion: with the message Prefect's server gives.
    """
    if not value:
        return
    too_long = len(value) > MAX_API_VERSION_LENGTH
    # Read as numbers only when short: int() refuses more than 4300 digits.
    match = None if too_long else _VERSION.fullmatch(value)
    if match is None:
        shown = value[:MAX_API_VERSION_LENGTH] + "…" if too_long else value
        raise InvalidApiVersion(
            "Invalid X-PREFECT-API-VERSION header format."
            f"Expected header in format 'x.y.z' but received {shown}"
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
    """Requires HTTP Basic credentials equal to `credentials` ("user:password") on every
    request but those of the operations in `public_operations` (path template -> methods),
    as Prefect's server does with PREFECT_SERVER_API_AUTH_STRING.

    The scheme name is case-insensitive (RFC 9110), and a public operation's path is public
    with a trailing slash too, or without one (Connexion then redirects it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: str,
        public_operations: dict[str, frozenset[str]],
    ) -> None:
        self.app = app
        self.expected = credentials.encode()
        self.public = PathTemplates(
            {template.rstrip("/"): methods for template, methods in public_operations.items()}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._is_public(scope):
            supplied = next(
                (value for name, value in scope["headers"] if name == b"authorization"), b""
            )
            # Constant time: how much of a guess matched must not show in the response time.
            if not hmac.compare_digest(_basic_credentials(supplied), self.expected):
                raise Unauthorized("Unauthorized")
        await self.app(scope, receive, send)

    def _is_public(self, scope: Scope) -> bool:
        template = self.public.template_of(scope["path"].rstrip("/"))
        return template is not None and scope["method"] in template.methods


def _basic_credentials(authorization: bytes) -> bytes:
    """The "user:password" of a Basic Authorization header; empty for anything else."""
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return b""
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""


class BodyBudget:
    """The bytes of request bodies one worker holds at a time, up to a limit.

    The event loop is the only user, so no lock is needed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes if that keeps the worker within its limit; whether it did."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        """Release bytes taken earlier."""
        self.held -= size


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may cost (see BodyLimitMiddleware)."""

    max_bytes: int
    idle_timeout: float
    max_buffered_bytes: int


class BodyLimitMiddleware:
    """Bounds what a request body may cost: its size, how long it may stall, and the bytes of
    all unfinished bodies a worker holds.

    A body larger than `max_bytes`, or than `max_buffered_bytes` (which it could never fit
    in), by Content-Length or as it streams, is a 413; one whose
    next part does not arrive within `idle_timeout` seconds is a 408; one that would take the
    worker past `max_buffered_bytes` is a 503 (LimitedBody says how a body is charged).
    These are raised where the body is read, and answered by the error handlers inside this
    middleware. An answer given before the whole body was read closes the connection: the
    rest may still be on its way, or never come.
    """

    def __init__(self, app: ASGIApp, *, limits: BodyLimits) -> None:
        self.app = app
        # A body larger than all a worker may hold could never be read: that is its limit
        # too, a 413, not a 503 that asks for it again.
        self.limits = replace(limits, max_bytes=min(limits.max_bytes, limits.max_buffered_bytes))
        # One per worker process: each builds its own application.
        self.budget = BodyBudget(limits.max_buffered_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = LimitedBody(Headers(scope=scope), receive, limits=self.limits, budget=self.budget)

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.finished:
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, body.receive, closing_send)
        finally:
            body.release()


class LimitedBody:
    """One request's body, read within BodyLimits and charged to the worker's BodyBudget.

    A body with a Content-Length is charged all of it when its request starts, before any of
    it is read, so one that does not fit is refused at its first read without its bytes being
    brought in. A chunked body, whose length is unknown, is charged part by part as it
    arrives. The charge is held until the request has been answered.
    """

    def __init__(
        self, headers: Headers, receive: Receive, *, limits: BodyLimits, budget: BodyBudget
    ) -> None:
        self._limits = limits
        self._budget = budget
        self._receive = receive
        self._chunked = "transfer-encoding" in headers
        self._declared = 0 if self._chunked else _declared_length(headers)
        self._received = 0
        self.finished = not self._chunked and not self._declared
        fits = self._declared <= limits.max_bytes and budget.take(self._declared)
        self._charged = self._declared if fits else 0

    async def receive(self) -> Message:
        """The next message of the request, raising where the body breaks a limit."""
        if self.finished:
            return await self._receive()  # after the body: waiting for a disconnect
        if self._declared > self._limits.max_bytes:
            raise RequestTooLarge(self._too_large())
        if self._declared and not self._charged:
            raise TooManyUnfinishedBodies(_TOO_MANY_UNFINISHED)
        message = await self._next_part()
        if message["type"] == "http.disconnect":
            # What did arrive may parse on its own (a JSON object cut after its last key),
            # but the client never finished asking.
            raise ClientDisconnected
        size = len(message.get("body", b""))
        if self._received + size > self._limits.max_bytes:
            raise RequestTooLarge(self._too_large())
        if self._chunked:
            if not self._budget.take(size):
                raise TooManyUnfinishedBodies(_TOO_MANY_UNFINISHED)
            self._charged += size
        self._received += size
        self.finished = not message.get("more_body", False)
        return message

    def release(self) -> None:
        """Give the body's charge back: its request has been answered (or abandoned)."""
        self._budget.give_back(self._charged)
        self._charged = 0

    async def _next_part(self) -> Message:
        try:
            async with asyncio.timeout(self._limits.idle_timeout):
                return await self._receive()
        except TimeoutError:
            raise RequestBodyTimeout(
                f"No part of the request body arrived for {self._limits.idle_timeout:g} s."
            ) from None

    def _too_large(self) -> str:
        return f"The request body is larger than {self._limits.max_bytes} bytes."


def _declared_length(headers: Headers) -> int:
    """The body's Content-Length; 0 when there is none (the server refuses malformed ones)."""
    value = headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else 0


_TOO_MANY_UNFINISHED = "The service holds too many unfinished request bodies; retry later."
_CLOSE = (b"connection", b"close")


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


class UnroutedRequestMiddleware:
    """Answers 404 for requests Connexion's router matched to no operation, before Flask.

    Connexion passes such requests on to Flask, whose own URL map is more lenient: it merges
    doubled slashes, so that `/api//health` would be redirected without a Location and
    `//api/health` served without Connexion's routing context (a 500).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and operation_id(scope) is None:
            raise HTTPException(404)
        await self.app(scope, receive, send)


def operation_id(scope: Scope) -> str | None:
    """The operation Connexion's router matched the request to; None when it matched none."""
    routing: dict[str, str | None] = scope.get("extensions", {}).get(ROUTING_CONTEXT, {})
    return routing.get("operation_id")


class PathTemplate:
    """A path of the document (`/api/task_runs/{id}`) as a pattern, with its methods."""

    def __init__(self, template: str, methods: frozenset[str]) -> None:
        segments = template.split("/")
        self.pattern = re.compile(
            "/".join("[^/]+" if _is_parameter(s) else re.escape(s) for s in segments)
        )
        self.allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        self.methods = frozenset(self.allow.split(", "))


def _is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def precedence(template: str) -> tuple[bool, ...]:
    """Sorts the templates a path could match so that its own comes first: of two, the one
    with a literal segment where the other has a parameter, at the first place they differ
    (`/task_runs/stats` before `/task_runs/{id}`), as OpenAPI matches concrete paths first.
    """
    return tuple(_is_parameter(segment) for segment in template.split("/"))


class PathTemplates:
    """Path templates (template -> methods), each path matched to its own template."""

    def __init__(self, methods_by_path: dict[str, frozenset[str]]) -> None:
        self.templates = [
            PathTemplate(path, methods_by_path[path])
            for path in sorted(methods_by_path, key=precedence)
        ]
        # One pattern for all of them, tried in that order: one match per request instead
        # of one per template. The group that matched names the template.
        self._any_template = re.compile(
            "|".join(
                f"(?P<t{index}>{template.pattern.pattern})"
                for index, template in enumerate(self.templates)
            )
        )

    def template_of(self, path: str) -> PathTemplate | None:
        """The template `path` belongs to, if there is one."""
        match = self._any_template.fullmatch(path)
        if match is None or match.lastgroup is None:
            return None
        return self.templates[int(match.lastgroup[1:])]


class MethodNotAllowedMiddleware:
    """Answers 405 when the document has the request's path but not its method, with every
    method of that path in `Allow`.

    Connexion routes each operation separately, so its own 405 lists only the methods of one
    of them.
    """

    def __init__(self, app: ASGIApp, *, methods_by_path: dict[str, frozenset[str]]) -> None:
        self.app = app
        self.paths = PathTemplates(methods_by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            template = self.paths.template_of(scope["path"])
            if template is not None and scope["method"] not in template.methods:
                raise MethodNotAllowed(template.allow)
        await self.app(scope, receive, send)


class MethodNotAllowed(Exception):
    """The path exists but not with this method; answered with 405 and `Allow`."""

    def __init__(self, allow: str) -> None:
        super().__init__("Method Not Allowed")
        self.allow = allow


async def read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """Every message of the request body, and the body they carry (all of it, chunked or
    not: the end is the message without `more_body`, not Content-Length).
    """
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)

"""uvicorn's HTTP/1.1 protocol (httptools), with bounds on the request head and JSON refusals.

uvicorn waits for a request line and headers as long as a client cares to send them, keeps
all of them however large, and refuses malformed HTTP with a plain-text 400. Here the head
must arrive within `timeout` seconds of the connection (or of the request's first byte, on a
kept-alive connection), be at most `max_bytes` long and hold at most `max_headers` headers;
otherwise the client gets 408 or 431, and malformed requests get 400, each as
`{"detail": ...}` with an `X-Request-ID`, and the connection is closed (a request pipelined
behind one still being answered is refused after that answer). The refusal is logged and
counted as an answered request is (RequestRecorder), without an operationId.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httptools
from asgi_correlation_id.context import correlation_id
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.contract.observability import log_request, new_request_id
from app.observability import metrics


@dataclass(frozen=True)
class HeadLimits:
    """How long a request head may take to arrive, and how large it may be."""

    timeout: float
    max_bytes: int
    max_headers: int


@dataclass(frozen=True)
class RefusalRecording:
    """Whether a refused request gets its log line and its count, as answered ones do."""

    log: bool
    count: bool


# What a refused request's log line says of a method or path that never fully arrived.
UNKNOWN = "-"


class _HeadRefused(Exception):
    """The request head breaks a limit; raised in a parser callback to stop the parser."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with HeadLimits."""

    def __init__(
        self, *args: Any, limits: HeadLimits, recording: RefusalRecording, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.recording = recording
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = 0.0
        self._request_line_read = False
        self._reading_head = True
        self._head_bytes = 0  # received while reading the head (an upper bound of its size)
        self._head_size = 0  # exactly: the target and every header name and value
        self._header_count = 0
        # A refusal of a pipelined request, sent once the response under way is.
        self._refusal_after_response: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as error:
            refusal = error.__context__
            if isinstance(refusal, _HeadRefused):
                self._refuse(refusal.status, refusal.detail)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._reading_head and self._head_bytes > self.limits.max_bytes:
            self._refuse(431, self._too_large())

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_line_read = False
        self._reading_head = True
        self._head_size = 0
        self._header_count = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._request_line_read = True
        self._head_size += len(name) + len(value)
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _HeadRefused(431, f"More than {self.limits.max_headers} request headers.")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._request_line_read = True
        if self._head_size > self.limits.max_bytes:
            raise _HeadRefused(431, self._too_large())
        self._disarm_head_timer()
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def _too_large(self) -> str:
        return f"The request line and headers are larger than {self.limits.max_bytes} bytes."

    def _arm_head_timer(self) -> None:
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse(
                408,
                f"The request line and headers did not arrive within {self.limits.timeout:g} s.",
            )

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with `{"detail": detail}` and close the connection."""
        self._disarm_head_timer()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request after one still being answered: that answer goes first
            # (its request may have been committed), then this refusal; nothing more is read.
            if self._refusal_after_response is None:
                self._refusal_after_response = (status, detail)
                self.transport.pause_reading()
            return
        request_id = new_request_id()
        body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._record_refusal(status, request_id)

    def on_response_complete(self) -> None:
        refusal = self._refusal_after_response
        if refusal is None:
            super().on_response_complete()
            return
        self._refusal_after_response = None
        self.server_state.total_requests += 1
        self._refuse(*refusal)

    def _record_refusal(self, status: int, request_id: str) -> None:
        """Log and count a refused request as RequestRecorder does an answered one."""
        seconds = self.loop.time() - self._head_started
        if self.recording.count:
            metrics.observe_request(operation_id=None, status=status, seconds=seconds)
        if self.recording.log:
            method, path = self._method_and_path()
            token = correlation_id.set(request_id)
            try:
                log_request(
                    method=method, path=path, operation_id=None, status=status, seconds=seconds
                )
            finally:
                correlation_id.reset(token)

    def _method_and_path(self) -> tuple[str, str]:
        """The request's method and decoded path, once its request line was read whole."""
        if not self._request_line_read:
            return UNKNOWN, UNKNOWN
        try:
            method = self.parser.get_method().decode("ascii")
            path = unquote(httptools.parse_url(self.url).path.decode("ascii"))
        except (httptools.HttpParserError, UnicodeDecodeError):
            return UNKNOWN, UNKNOWN
        return method, path

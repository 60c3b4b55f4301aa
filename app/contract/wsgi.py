"""Running the Flask application from the ASGI server: one thread hop per request.

Connexion's FlaskApp serves Flask through a2wsgi, which hands every read of the request body
and every part of the response between the event loop and the Flask thread separately:
three to four cross-thread round trips per request, each a wake-up of the loop and a wait of
the thread. The API only exchanges small JSON documents, so this bridge reads the whole
request first, runs Flask once in a thread pool, and sends the whole response back: one hop
there, one back. It also makes the number of Flask threads configurable, which Connexion
hard-codes to 10 (spec-first/connexion#1979), and gives reads threads of their own.

Reads (GET and HEAD) and writes run in separate pools. A write may wait for its turn and for
the disk; reads never queue behind such waits. And reads are CPU work from end to end: a few
threads keep both cores busy, while more would only take the interpreter from one another
(and from the event loop) more often.

It replaces the a2wsgi adapter inside Connexion's FlaskApp (`_middleware_app.asgi_app`),
a private part of Connexion; `install_wsgi_bridge` checks
that the adapter is where and what it expects, so that an upgrade that moves it fails at
start-up rather than silently serving through a2wsgi.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import build_environ
from connexion import FlaskApp
from starlette.types import Receive, Scope, Send

from app.contract.endpoints import READ_METHODS
from app.contract.middleware import operation_id, read_body

# (status, headers, body) of a finished WSGI response.
WSGIResult = tuple[int, list[tuple[bytes, bytes]], bytes]
# Statuses that have no content, and so no type of content (Flask gives every response one).
_WITHOUT_CONTENT = frozenset({204, 304})


class UnexpectedConnexionLayout(RuntimeError):
    """Connexion's FlaskApp no longer serves Flask through the adapter this module replaces."""


class BufferedWSGIBridge:
    """An ASGI application that runs a WSGI application in thread pools, one call per request."""

    def __init__(
        self,
        wsgi_app: Any,
        *,
        threads: int,
        read_threads: int,
        inline_operations: frozenset[str] = frozenset(),
    ) -> None:
        self.wsgi_app = wsgi_app
        # Operations that never wait (no database): answered on the event loop, so that a
        # liveness probe is not queued behind reads that wait for a slow database.
        self.inline_operations = inline_operations
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flask")
        self.read_executor = ThreadPoolExecutor(
            max_workers=read_threads, thread_name_prefix="flask-read"
        )
        # The pool's calls not finished yet, whether or not their requests still wait.
        self._unfinished: set[Future[WSGIResult]] = set()

    @property
    def running(self) -> int:
        """How many requests the pool has taken on and not finished.

        A request whose ASGI side was cancelled goes on in its thread until the application
        returns; this counts it until then.
        """
        return len(self._unfinished)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        _, body = await read_body(receive)
        environ = build_environ(scope, io.BytesIO(body))  # type: ignore[arg-type]
        environ["CONTENT_LENGTH"] = str(len(body))
        # Connexion's context (the operation being served) lives in context variables.
        context = contextvars.copy_context()
        if operation_id(scope) in self.inline_operations:
            status, headers, content = context.run(self._respond, environ)
        else:
            status, headers, content = await self._respond_in_a_thread(scope, context, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _respond_in_a_thread(
        self, scope: Scope, context: contextvars.Context, environ: Any
    ) -> WSGIResult:
        executor = self.read_executor if scope["method"] in READ_METHODS else self.executor
        future = executor.submit(context.run, self._respond, environ)
        # A set adds and discards atomically: no lock for the pool's threads to contend for.
        self._unfinished.add(future)
        future.add_done_callback(self._unfinished.discard)
        return await asyncio.wrap_future(future)

    def _respond(self, environ: Any) -> WSGIResult:
        """Run the WSGI application to the end and collect its response (in a pool thread)."""
        started: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers
                if started["status"] not in _WITHOUT_CONTENT or name.lower() != "content-type"
            ]
            return written.append

        iterable = self.wsgi_app(environ, start_response)
        try:
            written.extend(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return started["status"], started["headers"], b"".join(written)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def install_wsgi_bridge(
    app: FlaskApp,
    *,
    threads: int,
    read_threads: int,
    inline_operations: frozenset[str] = frozenset(),
) -> BufferedWSGIBridge:
    """Serve `app`'s Flask application through a BufferedWSGIBridge instead of a2wsgi."""
    adapter_holder = getattr(app, "_middleware_app", None)
    adapter = getattr(adapter_holder, "asgi_app", None)
    if not isinstance(adapter, WSGIMiddleware) or adapter.app != app.app.wsgi_app:
        raise UnexpectedConnexionLayout(
            "app/contract/wsgi.py expects FlaskApp._middleware_app.asgi_app to be a2wsgi's "
            "WSGIMiddleware around the Flask app; check the Connexion upgrade"
        )
    adapter.executor.shutdown(wait=False)
    bridge = BufferedWSGIBridge(
        app.app.wsgi_app,
        threads=threads,
        read_threads=read_threads,
        inline_operations=inline_operations,
    )
    adapter_holder.asgi_app = bridge  # type: ignore[union-attr]
    return bridge

"""Endpoints served beside the API's operations: the document, its docs page, the metrics.

They are not operations of openapi.yaml (the README says why), so Connexion does not route
them; this middleware answers them before Connexion's router sees the request, and passes
every other request on untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

# The methods that only read: served by these endpoints, and run on the read threads.
READ_METHODS = frozenset({"GET", "HEAD"})


class ReadOnlyEndpoints:
    """Answers GET and HEAD on `paths` (exact) and under `prefixes`; 405 for other methods."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Mapping[str, ASGIApp],
        prefixes: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.paths = dict(paths)
        self.prefixes = tuple((prefixes or {}).items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoint(scope) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in READ_METHODS:
            raise HTTPException(405, headers={"Allow": "GET, HEAD"})
        await endpoint(scope, receive, send)

    def _endpoint(self, scope: Scope) -> ASGIApp | None:
        path: str = scope["path"]
        endpoint = self.paths.get(path)
        if endpoint is not None:
            return endpoint
        for prefix, app in self.prefixes:
            if path.startswith(prefix):
                return app
        return None

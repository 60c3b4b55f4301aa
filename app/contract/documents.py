"""openapi.yaml as written, and Swagger UI showing it, served under the API's base path.

Connexion would serve its own copy of the document: expanded, every `$ref` inlined, and the
descriptions beside `$ref`s lost. Its Swagger UI middleware, which serves that copy, is left
out of the stack (`contract_middlewares` in app/contract/api.py); instead
`/api/openapi.yaml` is the file byte for byte and `/api/openapi.json` the same document in
JSON. `/api/docs` is Swagger UI 5 (the bundle swagger-ui-py ships, served from the package,
so the page works without any other host), reading `/api/openapi.json`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from swagger_ui.core import ApplicationDocument

from app.contract.spec import SPEC_PATH

YAML_MEDIA_TYPE = "application/yaml"
# Swagger UI's options: one document, so no bar to load others; "Try it out" shows timings.
SWAGGER_UI_PARAMETERS = {
    "layout": json.dumps("BaseLayout"),
    "presets": "[SwaggerUIBundle.presets.apis]",
    "deepLinking": "true",
    "displayRequestDuration": "true",
}


@cache
def document_texts(path: Path = SPEC_PATH) -> tuple[bytes, bytes]:
    """The document as YAML (the file itself) and as JSON (the same document)."""
    as_yaml = path.read_bytes()
    document = yaml.safe_load(as_yaml)
    as_json = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return as_yaml, as_json


def swagger_ui_page(*, docs_path: str, document_url: str, title: str) -> str:
    """The Swagger UI page (swagger-ui-py's template), its assets under `docs_path`/static."""
    page = ApplicationDocument(
        None,
        config_url=document_url,
        url_prefix=docs_path,
        title=title,
        parameters=SWAGGER_UI_PARAMETERS,
    )
    # The template would point Swagger UI at a copy of the document under `docs_path`;
    # it reads the one this service serves instead.
    page.parameters["url"] = json.dumps(document_url)
    html: str = page.doc_html
    return html


def document_endpoints(
    *, base_path: str, title: str
) -> tuple[dict[str, ASGIApp], dict[str, ASGIApp]]:
    """(exact paths, path prefixes) -> ASGI apps serving the document and its docs page."""
    as_yaml, as_json = document_texts()
    docs_path = f"{base_path}/docs"
    document_url = f"{base_path}/openapi.json"
    page = swagger_ui_page(docs_path=docs_path, document_url=document_url, title=title)
    assets = ApplicationDocument(None, config_url=document_url, url_prefix=docs_path).static_dir
    paths: dict[str, ASGIApp] = {
        f"{base_path}/openapi.yaml": Response(as_yaml, media_type=YAML_MEDIA_TYPE),
        document_url: Response(as_json, media_type="application/json"),
        docs_path: Response(page, media_type="text/html"),
    }
    assets_path = f"{docs_path}/static"
    prefixes: dict[str, ASGIApp] = {
        f"{assets_path}/": Mount(assets_path, app=StaticFiles(directory=assets)),
    }
    return paths, prefixes

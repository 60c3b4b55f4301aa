"""The hooks into Connexion's internals fail loudly on a Connexion they were not written for."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import connexion.spec
import pytest
from connexion import FlaskApp

from app.contract import spec
from app.contract.spec import (
    SUPPORTED_CONNEXION,
    UnsupportedConnexion,
    enable_openapi_31,
    load_spec,
)
from app.contract.wsgi import BufferedWSGIBridge, UnexpectedConnexionLayout, install_wsgi_bridge
from app.main import create_app
from app.settings import Settings


def test_the_pinned_connexion_is_installed() -> None:
    assert version("connexion") == SUPPORTED_CONNEXION


def test_another_connexion_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "version", lambda _: "3.4.0")

    with pytest.raises(UnsupportedConnexion, match=r"3\.4\.0"):
        enable_openapi_31()


def test_connexion_loads_the_31_document_once_enabled() -> None:
    enable_openapi_31()

    loaded = connexion.spec.Specification.load(load_spec())

    assert loaded.version == (3, 1, 0)
    assert loaded.base_path == "/api"


def test_an_invalid_document_is_still_refused() -> None:
    enable_openapi_31()
    document = load_spec()
    document["paths"]["/task_runs/"]["post"]["responses"] = "not a mapping"

    with pytest.raises(connexion.spec.InvalidSpecification):
        connexion.spec.Specification.load(document)


def test_the_wsgi_bridge_replaces_a2wsgi(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))

    assert isinstance(app._middleware_app.asgi_app, BufferedWSGIBridge)
    with app.test_client() as client:
        assert client.get("/api/health").json() is True


def test_the_wsgi_bridge_refuses_an_unexpected_layout() -> None:
    app = FlaskApp(__name__)
    install_wsgi_bridge(app, threads=1, read_threads=1)

    with pytest.raises(UnexpectedConnexionLayout, match="a2wsgi"):
        install_wsgi_bridge(app, threads=1, read_threads=1)

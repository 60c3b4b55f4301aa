"""The OpenAPI 3.1 hook into Connexion fails loudly on a Connexion it was not written for."""

from __future__ import annotations

from importlib.metadata import version

import connexion.spec
import pytest

from app.contract import spec
from app.contract.spec import (
    SUPPORTED_CONNEXION,
    UnsupportedConnexion,
    enable_openapi_31,
    load_spec,
)


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

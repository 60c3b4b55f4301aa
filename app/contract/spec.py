"""Loading openapi.yaml (OpenAPI 3.1) into Connexion 3.3, which only knows OpenAPI 3.0.

Connexion checks every document against its bundled 3.0 meta-schema, which rejects `3.1.0`
and 3.1 constructs such as `type: [string, "null"]` (spec-first/connexion#1396). The check is
one private classmethod; it is replaced by openapi-spec-validator, which knows 3.0 and 3.1.
Like the service's other hooks into Connexion's private parts (app/contract/wsgi.py,
app/contract/operations.py), it holds only for the pinned Connexion version, checked here.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import connexion.spec
import yaml
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SUPPORTED_CONNEXION = "3.3.0"


class UnsupportedConnexion(RuntimeError):
    """The installed Connexion is not the one the OpenAPI 3.1 hook was written for."""


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """A fresh copy of the OpenAPI document (Connexion adds defaults to the dict it is given)."""
    return copy.deepcopy(_parsed(path))


@cache
def _parsed(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    return document


def _validate_with_openapi_spec_validator(_cls: type, spec: dict[str, Any]) -> None:
    try:
        validate_openapi(spec)
    except OpenAPIValidationError as error:
        raise connexion.spec.InvalidSpecification(str(error)) from error


def enable_openapi_31() -> None:
    """Make Connexion accept OpenAPI 3.1 documents (idempotent)."""
    installed = version("connexion")
    specification = connexion.spec.OpenAPISpecification
    if installed != SUPPORTED_CONNEXION or "_validate_spec" not in vars(
        connexion.spec.Specification
    ):
        raise UnsupportedConnexion(
            f"app/contract/spec.py extends Connexion {SUPPORTED_CONNEXION}, found {installed}: "
            "check Specification._validate_spec and the validator map, then update the pin"
        )
    specification._validate_spec = classmethod(_validate_with_openapi_spec_validator)

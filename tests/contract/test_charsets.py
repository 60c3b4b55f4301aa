"""A body is read in the charset its Content-Type declares, however the parameter is written
(RFC 9110: spaces around `;`, the name in any case, the value quoted or not).
"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.support.api import CREATE, assert_validation_error, read_run

LATIN_1_BODY = '{"task_key": "caf\u00e9", "dynamic_key": "0"}'.encode("latin-1")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json;charset=latin-1",
        "application/json; charset=latin-1",
        "application/json ;  charset=latin-1",
        "application/json;CHARSET=latin-1",
        "Application/JSON; Charset=Latin-1",
        'application/json; charset="latin-1"',
        "application/json; version=1; charset=latin-1",
    ],
)
def test_a_body_is_read_in_its_declared_charset(client: TestClient, content_type: str) -> None:
    response = client.post(CREATE, content=LATIN_1_BODY, headers={"content-type": content_type})

    assert response.status_code == 201, response.text
    assert read_run(client, response.json()["id"])["task_key"] == "caf\u00e9"


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/json;"]
)
def test_a_body_is_read_as_utf_8_unless_declared_otherwise(
    client: TestClient, content_type: str
) -> None:
    response = client.post(CREATE, content=LATIN_1_BODY, headers={"content-type": content_type})

    assert_validation_error(response, ["body", 17], "json_invalid")


def test_a_body_in_an_unknown_charset_is_invalid_json(client: TestClient) -> None:
    response = client.post(
        CREATE,
        content=LATIN_1_BODY,
        headers={"content-type": 'application/json; charset="no-such-charset"'},
    )

    assert_validation_error(response, ["body", 0], "json_invalid")

"""uuid_text and json_text: a Uuid column read as its canonical text and a JSON column as
its stored text, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import JSON, Column, Engine, MetaData, String, Table, Uuid, create_engine, select

from app.db.types import json_text, uuid_text

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("other", Uuid, nullable=True),
    Column("document", JSON, nullable=True),
)
# The same table as text, to store ids that this service would not have written.
raw_things = Table(
    "things",
    MetaData(),
    Column("id", String, primary_key=True),
    Column("other", String, nullable=True),
    Column("document", String, nullable=True),
)
ID = uuid.UUID("01a24ac0-001d-79e6-b92a-5810aede533c")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def test_ids_read_as_their_canonical_text(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(things.insert().values(id=ID, other=None, document={"a": [1, 2.5]}))
        row = connection.execute(
            select(uuid_text(things.c.id), uuid_text(things.c.other), json_text(things.c.document))
        ).one()

    assert list(row) == [str(ID), None, '{"a": [1, 2.5]}']


@pytest.mark.parametrize(
    "stored",
    [ID.hex.upper(), str(ID), str(ID).upper(), "01234567890123456789012345678901"],
    ids=["upper-case-hex", "dashed", "dashed-upper-case", "digits-only"],
)
def test_ids_stored_by_others_on_sqlite_read_as_the_canonical_text(
    engine: Engine, backend: str, stored: str
) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL stores a uuid, not its text")
    with engine.begin() as connection:
        connection.execute(raw_things.insert().values(id=stored))
        read = connection.execute(select(uuid_text(things.c.id))).scalar_one()

    assert read == str(uuid.UUID(stored))


@pytest.mark.parametrize("document", [5, 0.30000000000000004, -0.0, "5", True, None, [1]])
def test_a_document_that_is_a_bare_value_reads_as_its_json_text(
    engine: Engine, document: object
) -> None:
    # SQLite gives a JSON column NUMERIC affinity: a bare number is stored as a number.
    with engine.begin() as connection:
        connection.execute(things.insert().values(id=ID, document=document))
        read = connection.execute(select(json_text(things.c.document))).scalar_one()

    assert json.loads(read) == document

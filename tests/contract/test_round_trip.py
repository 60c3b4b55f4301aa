"""Nothing is stored that cannot be read back: any create answered 2xx reads back equal.

Bodies come from the contract (Schemathesis's strategy for the create operation), with
`state.data` replaced now and then by values nesting up to 300 levels.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from connexion import FlaskApp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.db.tables import task_run
from app.main import database_of
from tests.contract.test_schemathesis import CONFIG_PATH, SPEC_PATH

SCHEMA = schemathesis.openapi.from_path(
    SPEC_PATH, config=schemathesis.config.SchemathesisConfig.from_path(CONFIG_PATH)
)
CREATE = SCHEMA["/task_runs/"]["POST"]
COMPUTED_AT_READ = {"estimated_run_time", "estimated_start_time_delta"}
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


def nested(kinds: list[str], leaf: Any) -> Any:
    """`leaf` wrapped in an array ("list") or an object ("dict") for each of `kinds`."""
    value = leaf
    for kind in kinds:
        value = [value] if kind == "list" else {"k": value}
    return value


# Up to well past the 255 levels at which a stored value once became unreadable.
LEVELS = st.integers(min_value=0, max_value=300).flatmap(
    lambda levels: st.lists(st.sampled_from(["list", "dict"]), min_size=levels, max_size=levels)
)
DEEP_DATA = st.builds(nested, LEVELS, SCALARS)


def rows(app: FlaskApp) -> int:
    with database_of(app).snapshot() as connection:
        return int(connection.scalar(select(func.count()).select_from(task_run)) or 0)


def without_estimates(task_run_json: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in task_run_json.items() if key not in COMPUTED_AT_READ}


def test_any_create_answered_2xx_reads_back_equal(app: FlaskApp) -> None:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=CREATE.as_strategy(), data=st.one_of(st.none(), DEEP_DATA))
    def check(case: Any, data: Any) -> None:
        body = case.body
        if data is not None and isinstance(body, dict):
            state = body.get("state") if isinstance(body.get("state"), dict) else None
            body = {**body, "state": {**(state or {"type": "COMPLETED"}), "data": data}}
        before = rows(app)
        with app.test_client() as client:
            created = client.post("/api/task_runs/", json=body, headers=case.headers or {})
            if created.status_code not in (200, 201):
                assert rows(app) == before, created.text  # a refusal leaves nothing behind
                return
            read = client.get(f"/api/task_runs/{created.json()['id']}")

        assert read.status_code == 200, read.text
        assert without_estimates(read.json()) == without_estimates(created.json())

    check()

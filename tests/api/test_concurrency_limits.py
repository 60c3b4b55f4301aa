"""The Concurrency Limits V2 operations Prefect's engine calls before a tagged task runs:
slots always granted, bound by no limit, since the service stores none.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

INCREMENT = "/api/v2/concurrency_limits/increment-with-lease"
DECREMENT = "/api/v2/concurrency_limits/decrement-with-lease"
# What Prefect's engine sends for a task run with the tags "etl" and "db".
ENGINE_REQUEST = {
    "names": ["tag:etl", "tag:db"],
    "slots": 1,
    "mode": "concurrency",
    "lease_duration": 60,
    "holder": {"type": "task_run", "id": str(uuid.uuid4())},
}


class TestBulkIncrementActiveSlotsWithLease:
    def test_the_engines_request_is_granted_under_no_limit(self, client: TestClient) -> None:
        response = client.post(INCREMENT, json=ENGINE_REQUEST)

        assert response.status_code == 200
        granted = response.json()
        assert granted["limits"] == []  # nothing for the client to renew or give back
        assert uuid.UUID(granted["lease_id"])

    def test_each_grant_is_a_lease_of_its_own(self, client: TestClient) -> None:
        leases = {client.post(INCREMENT, json=ENGINE_REQUEST).json()["lease_id"] for _ in "ab"}

        assert len(leases) == 2

    def test_the_least_a_request_needs_and_unknown_keys(self, client: TestClient) -> None:
        body = {"names": ["shared-api"], "slots": 3, "mode": "rate_limit", "later": 1}

        assert client.post(INCREMENT, json=body).status_code == 200

    @pytest.mark.parametrize(
        ("change", "location"),
        [
            ({"slots": 0}, ["body", "slots"]),
            ({"names": []}, ["body", "names"]),
            ({"mode": "queue"}, ["body", "mode"]),
            ({"lease_duration": 59}, ["body", "lease_duration"]),
            ({"lease_duration": 86401}, ["body", "lease_duration"]),
            ({"holder": {"type": "worker", "id": str(uuid.uuid4())}}, ["body", "holder"]),
            ({"holder": {"type": "task_run", "id": "x", "extra": 1}}, ["body", "holder"]),
        ],
    )
    def test_what_prefect_refuses_is_a_422(
        self, client: TestClient, change: dict[str, Any], location: list[str]
    ) -> None:
        response = client.post(INCREMENT, json={**ENGINE_REQUEST, **change})

        assert response.status_code == 422
        assert all(item["loc"][: len(location)] == location for item in response.json()["detail"])

    @pytest.mark.parametrize("missing", ["names", "slots"])
    def test_names_and_slots_are_required(self, client: TestClient, missing: str) -> None:
        body = {key: value for key, value in ENGINE_REQUEST.items() if key != missing}

        response = client.post(INCREMENT, json=body)

        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "missing"


class TestBulkDecrementActiveSlotsWithLease:
    def test_a_granted_lease_is_given_back(self, client: TestClient) -> None:
        lease_id = client.post(INCREMENT, json=ENGINE_REQUEST).json()["lease_id"]

        response = client.post(DECREMENT, json={"lease_id": lease_id})

        assert (response.status_code, response.content) == (204, b"")

    def test_an_unknown_lease_is_204_too(self, client: TestClient) -> None:
        assert client.post(DECREMENT, json={"lease_id": str(uuid.uuid4())}).status_code == 204

    @pytest.mark.parametrize("body", [{}, {"lease_id": "not-a-uuid"}, {"lease_id": None}])
    def test_a_missing_or_malformed_lease_id_is_a_422(
        self, client: TestClient, body: dict[str, Any]
    ) -> None:
        assert client.post(DECREMENT, json=body).status_code == 422

"""Handlers of the Concurrency Limits V2 operations Prefect's engine calls for tagged tasks."""

from __future__ import annotations

from typing import Literal

from app.services.ids import uuid7
from generated import models


class ConcurrencyLimitHandlers:
    """The operations tagged "Concurrency Limits V2".

    The service stores no concurrency limits, so slots are always granted, bound by no limit:
    Prefect's engine asks for them before every run of a task with tags, and holds, renews
    and gives back nothing when the answer names no limit.
    """

    def bulk_increment_active_slots_with_lease(
        self,
        *,
        body: models.IncrementSlotsWithLeaseBody,  # noqa: ARG002 - granted whatever it asks
    ) -> tuple[models.ConcurrencyLimitWithLeaseResponse, Literal[200]]:
        """The slots, under a new lease that no limit counts."""
        return models.ConcurrencyLimitWithLeaseResponse(lease_id=uuid7(), limits=[]), 200

    def bulk_decrement_active_slots_with_lease(
        self,
        *,
        body: models.DecrementSlotsWithLeaseBody,  # noqa: ARG002 - no lease holds slots
    ) -> tuple[None, Literal[204]]:
        """Nothing to give back."""
        return None, 204

"""Identifiers: time-ordered UUIDs (version 7, RFC 9562)."""

from __future__ import annotations

import os
import time
from uuid import UUID

_VERSION_7 = 0x7 << 76
_VARIANT_RFC_9562 = 0b10 << 62


def uuid7() -> UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, then 74 random bits.

    Ids that grow with time keep inserts at the right edge of the primary-key index.
    """
    milliseconds = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    random_a = (random_bits >> 62) & 0xFFF
    random_b = random_bits & ((1 << 62) - 1)
    return UUID(
        int=(milliseconds << 80) | _VERSION_7 | (random_a << 64) | _VARIANT_RFC_9562 | random_b
    )

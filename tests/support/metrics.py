"""A running server's `/metrics`, scraped, and traffic for it spread over its workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import RunningServer

CONCURRENCY = 16
# A request to send: method, path under /api, JSON body (or None).
Request = tuple[str, str, dict[str, str] | None]


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape: name -> list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    @classmethod
    def of(cls, server: RunningServer) -> Scrape:
        response = httpx.get(f"{server.base_url}/metrics", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if labels.items() <= sample_labels.items()
        )

    def requests(self) -> Counter[tuple[str, int]]:
        return Counter(
            {
                (labels["operation_id"], int(labels["status"])): int(value)
                for labels, value in self.samples["taskrun_http_requests_total"]
            }
        )


def send_all(server: RunningServer, requests: Sequence[Request]) -> list[int]:
    """Send the requests CONCURRENCY at a time, each on a new connection; their statuses."""

    def send(request: Request) -> int:
        method, path, body = request
        with httpx.Client(base_url=server.api_url, timeout=60) as client:
            return client.request(method, path, json=body).status_code

    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return list(pool.map(send, requests))

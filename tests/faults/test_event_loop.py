"""No request can stall a worker: hostile bodies are refused in bounded time, off the loop, and
websocket heartbeats are answered under load."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect
from websockets.sync.connection import Connection
from websockets.typing import Subprotocol

from tests.support.databases import sqlite_database
from tests.support.server import RunningServer, running_server

THIRTY_THOUSAND_TAGS = (
    b'{"task_key": "x", "dynamic_key": "0", "tags": [' + b",".join([b"1"] * 30_000) + b"]}"
)
HUNDRED_THOUSAND_DEEP = (
    b'{"task_key": "y", "dynamic_key": "0", "state": {"type": "COMPLETED", "data": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}}"
)
HEALTH_WITHIN_SECONDS = 0.1
REFUSED_WITHIN_SECONDS = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with (
        sqlite_database(tmp_path_factory.mktemp("loop")) as url,
        running_server(url, workers=2) as running,
    ):
        warm_up(running.api_url)
        yield running


def warm_up(api_url: str) -> None:
    """Let each worker build what it builds on its first requests (routes, validators)."""
    for number in range(20):
        body = {"task_key": "warm-up", "dynamic_key": str(number), "tags": [1]}
        assert httpx.post(f"{api_url}/task_runs/", json=body).status_code == 422
        body["tags"] = ["a"]
        assert httpx.post(f"{api_url}/task_runs/", json=body).status_code == 201


def post_timed(api_url: str, body: bytes) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{api_url}/task_runs/",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    return response.status_code, time.monotonic() - started


def health_latencies(api_url: str, *, until: float) -> list[float]:
    """GET /api/health on a new connection each time (so that both workers are asked)."""
    latencies = []
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=api_url, limits=no_reuse, timeout=30) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            response = client.get("/health")
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.01)
    return latencies


class TestCreateTaskRun:
    def test_hostile_bodies_are_refused_in_time_while_health_answers(
        self, server: RunningServer
    ) -> None:
        bodies = [THIRTY_THOUSAND_TAGS, HUNDRED_THOUSAND_DEEP] * 2

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            posted = [pool.submit(post_timed, server.api_url, body) for body in bodies]
            latencies = health_latencies(server.api_url, until=time.monotonic() + 1.5)
            answers = [future.result() for future in posted]

        assert [status for status, _ in answers] == [422] * len(bodies)
        assert max(seconds for _, seconds in answers) < REFUSED_WITHIN_SECONDS, answers
        assert len(latencies) >= 10
        assert max(latencies) < HEALTH_WITHIN_SECONDS, sorted(latencies)[-5:]

    def test_the_refusals_say_what_is_wrong(self, server: RunningServer) -> None:
        headers = {"content-type": "application/json"}

        tags = httpx.post(
            f"{server.api_url}/task_runs/", content=THIRTY_THOUSAND_TAGS, headers=headers
        )
        deep = httpx.post(
            f"{server.api_url}/task_runs/", content=HUNDRED_THOUSAND_DEEP, headers=headers
        )

        assert tags.json()["detail"] == [
            {
                "loc": ["body", "tags"],
                "msg": "30000 items, more than the 1000 allowed",
                "type": "maxItems",
            }
        ]
        assert deep.json()["detail"] == [
            {
                "loc": ["body"],
                "msg": "The body nests arrays and objects more than 64 levels deep",
                "type": "x-max-depth",
            }
        ]
        assert deep.json()["request_body"] is None


PING_INTERVAL_SECONDS = 0.05
LOADED_SECONDS = 3.0
PONG_WITHIN_SECONDS = 1.0


def keep_busy(api_url: str, number: int, *, until: float) -> int:
    """Creates and reads on one kept-alive connection until `until`; how many were answered."""
    answered = 0
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while time.monotonic() < until:
            body = {"task_key": f"load-{number}", "dynamic_key": str(answered)}
            created = client.post("/task_runs/", json=body)
            assert created.status_code == 201
            assert client.get(f"/task_runs/{created.json()['id']}").status_code == 200
            answered += 2
    return answered


def pong_latencies(socket: Connection, *, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.monotonic()
        assert socket.ping().wait(timeout=10), "no pong within 10 s"
        latencies.append(time.monotonic() - started)
        time.sleep(PING_INTERVAL_SECONDS)
    return latencies


class TestWebsockets:
    def test_heartbeats_are_answered_promptly_under_http_load(self, server: RunningServer) -> None:
        ws_url = server.api_url.replace("http://", "ws://") + "/events/in"
        with connect(ws_url, subprotocols=[Subprotocol("prefect")]) as socket:
            socket.send(json.dumps({"type": "auth", "token": None}))
            assert json.loads(socket.recv(timeout=10)) == {"type": "auth_success"}
            until = time.monotonic() + LOADED_SECONDS
            with ThreadPoolExecutor(max_workers=8) as pool:
                load = [pool.submit(keep_busy, server.api_url, n, until=until) for n in range(8)]
                latencies = pong_latencies(socket, until=until)
                answered = sum(future.result() for future in load)

        assert answered >= 100  # the service was busy all along
        assert len(latencies) >= 10
        assert max(latencies) < PONG_WITHIN_SECONDS, sorted(latencies)[-5:]

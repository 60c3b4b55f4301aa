"""Bounded clients: slow, stalled, oversized and malformed requests are cut off with JSON."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.rawhttp import RawResponse, connect, exchange, parse, read_until_closed
from tests.support.databases import sqlite_database
from tests.support.faults import anonymous_memory_bytes, wait_for
from tests.support.server import RunningServer, running_server

logger = logging.getLogger(__name__)

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 3.0
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 50
BUFFERED_BODY_BYTES = 32 * 1024 * 1024
TEN_MEGABYTES = 10 * 1000 * 1000
# Cut off within the timeout plus this much (a loaded machine, the event loop's turn).
SLACK_SECONDS = 1.5
# A worker of its own for the budget's bookkeeping, with room for one upload of HELD bytes.
SMALL_BUFFERED_BODY_BYTES = 1_000_000
HELD = 600_000
# Time for the server to read what was sent on a connection before another one is opened.
SETTLE_SECONDS = 0.5


def served_on_sqlite(
    directory: Path, *, workers: int, environment: dict[str, str]
) -> Iterator[RunningServer]:
    """A server of `workers` processes with `environment`, on a new SQLite file."""
    with (
        sqlite_database(directory) as url,
        running_server(url, workers=workers, environment=environment) as running,
    ):
        yield running


# glibc's malloc, for the server under test: buffers of 64 KiB and more get pages of their
# own, handed back when freed, so that a worker's resident memory follows what it holds
# rather than what it once held (by default glibc raises that threshold as large buffers
# are freed, and keeps the freed heap).
MALLOC_HANDING_BACK = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    environment = {
        "REQUEST_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "MAX_REQUEST_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "MAX_REQUEST_HEADERS": str(MAX_HEADERS),
        "MAX_BUFFERED_BODY_BYTES": str(BUFFERED_BODY_BYTES),
        **MALLOC_HANDING_BACK,
    }
    yield from served_on_sqlite(
        tmp_path_factory.mktemp("clients"), workers=2, environment=environment
    )


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    environment = {
        "REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "MAX_BUFFERED_BODY_BYTES": str(SMALL_BUFFERED_BODY_BYTES),
    }
    yield from served_on_sqlite(
        tmp_path_factory.mktemp("budget"), workers=1, environment=environment
    )


@pytest.fixture
def budget(one_worker: RunningServer) -> Iterator[RunningServer]:
    """The one-worker server; after the test, its budget is whole again for the next one."""
    yield one_worker
    wait_for(lambda: upload_whole(one_worker.port, HELD).status == 422, timeout=SLACK_SECONDS)


def assert_refused(response: RawResponse, status: int, detail_part: str) -> None:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert detail_part in response.json()["detail"]


def trickle(port: int, parts: list[bytes], *, interval: float) -> RawResponse:
    """Send `parts` one at a time, `interval` apart, for as long as the server listens."""
    started = time.monotonic()
    connection = connect(port)
    for part in parts:
        try:
            connection.sendall(part)
        except OSError:
            break
        time.sleep(interval)
    return read_until_closed(connection, started=started)


class TestRequestHead:
    def test_a_connection_that_sends_nothing_is_closed_with_408(
        self, server: RunningServer
    ) -> None:
        started = time.monotonic()
        response = read_until_closed(connect(server.port), started=started)

        assert_refused(response, 408, "did not arrive within 1 s")
        # asyncio may run a timer up to its clock's resolution early.
        assert HEADER_TIMEOUT - 0.01 <= response.closed_after < HEADER_TIMEOUT + SLACK_SECONDS

    def test_headers_sent_slowly_are_cut_off_at_the_timeout(self, server: RunningServer) -> None:
        head = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"

        response = trickle(server.port, [head[i : i + 1] for i in range(len(head))], interval=0.1)

        assert_refused(response, 408, "did not arrive within 1 s")
        assert response.closed_after < HEADER_TIMEOUT + SLACK_SECONDS

    def test_headers_larger_than_the_limit_are_431(self, server: RunningServer) -> None:
        value = b"a" * (MAX_HEADER_BYTES + 1)

        response = exchange(
            server.port, b"GET /api/health HTTP/1.1\r\nX-Big: " + value + b"\r\n\r\n"
        )

        assert_refused(response, 431, f"larger than {MAX_HEADER_BYTES} bytes")

    def test_a_header_block_that_never_ends_is_431_before_it_is_all_read(
        self, server: RunningServer
    ) -> None:
        started = time.monotonic()
        connection = connect(server.port)
        sent = 0
        try:
            connection.sendall(b"GET /api/health HTTP/1.1\r\nX-Endless: ")
            while sent < 50 * 1024 * 1024:
                connection.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server refused and closed the connection

        response = read_until_closed(connection, started=started)

        # Cut off long before the 50 MB: what was sent beyond the limit sat in the sockets'
        # buffers (a few MB on loopback), not in the worker.
        assert sent < 10 * 1024 * 1024
        assert response.status in (431, None)  # None: the reset came before the answer

    def test_too_many_headers_are_431(self, server: RunningServer) -> None:
        headers = b"".join(b"X-H%d: v\r\n" % number for number in range(MAX_HEADERS + 1))

        response = exchange(server.port, b"GET /api/health HTTP/1.1\r\n" + headers + b"\r\n")

        assert_refused(response, 431, f"More than {MAX_HEADERS} request headers")

    @pytest.mark.parametrize(
        "request_head",
        [
            b"GARBAGE\r\n\r\n",
            b"GET /api/he alth HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /api/health HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n\r\n",
            b"GET /api/health HTTP/9.9\r\nHost: x\r\n\r\n",
        ],
    )
    def test_a_malformed_request_is_400_json(
        self, server: RunningServer, request_head: bytes
    ) -> None:
        response = exchange(server.port, request_head)

        assert_refused(response, 400, "Invalid HTTP request received.")

    def test_a_malformed_request_pipelined_after_a_create_comes_after_its_answer(
        self, server: RunningServer
    ) -> None:
        body = json.dumps({"task_key": "pipelined", "dynamic_key": str(uuid.uuid4())}).encode()
        create = (
            b"POST /api/task_runs/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

        started = time.monotonic()
        connection = connect(server.port)
        connection.sendall(create + b"GARBAGE\r\n\r\n")
        received = read_until_closed(connection, started=started)

        # The create was committed: its client gets its answer first, then the refusal.
        assert received.status == 201
        length = int(received.headers["content-length"])
        answer, rest = received.body[:length], received.body[length:]
        assert json.loads(answer)["task_key"] == "pipelined"
        refusal = parse(rest, closed_after=received.closed_after)
        assert_refused(refusal, 400, "Invalid HTTP request received.")

    def test_headers_within_the_limits_are_served(self, server: RunningServer) -> None:
        headers = b"".join(b"X-H%d: v\r\n" % number for number in range(MAX_HEADERS - 2))

        response = exchange(
            server.port,
            b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n",
        )

        assert response.status == 200
        assert response.body == b"true"


class TestRequestBody:
    def test_a_stalled_body_is_cut_off_with_408(self, server: RunningServer) -> None:
        started = time.monotonic()
        connection = connect(server.port)
        connection.sendall(
            b"POST /api/task_runs/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"task_key": '
        )

        response = read_until_closed(connection, started=started)

        assert_refused(response, 408, "No part of the request body arrived for 3 s")
        assert BODY_TIMEOUT - 0.01 <= response.closed_after < BODY_TIMEOUT + SLACK_SECONDS

    def test_a_body_cut_short_by_a_client_that_left_is_not_acted_on(
        self, server: RunningServer
    ) -> None:
        name = f"cut-short-{uuid.uuid4()}"
        body = json.dumps({"task_key": "cut-short", "dynamic_key": "0", "name": name}).encode()
        connection = connect(server.port)
        # What is sent parses as a whole JSON object; the rest of the declared body never comes.
        connection.sendall(upload_head(len(body) + 50) + body)
        time.sleep(SETTLE_SECONDS)
        connection.close()
        time.sleep(SETTLE_SECONDS)

        query = json.dumps({"task_runs": {"name": {"any_": [name]}}}).encode()
        counted = exchange(server.port, post_head("/api/task_runs/count", len(query)) + query)

        assert counted.status == 200
        assert counted.json() == 0

    def test_stalled_uploads_hold_no_more_memory_than_the_bound(
        self, server: RunningServer
    ) -> None:
        workers = server.worker_pids()
        assert len(workers) == 2
        before = {pid: anonymous_memory_bytes(pid) for pid in workers}
        peak = dict(before)
        uploads = [StalledUpload(server.port) for _ in range(40)]
        for upload in uploads:
            upload.start()

        # Measured once every upload has stalled or been refused: while they arrive, the
        # server also reads ahead on the connections it is about to refuse (README).
        samples = 0
        deadline = time.monotonic() + BODY_TIMEOUT + 10
        while time.monotonic() < deadline and not all(upload.done for upload in uploads):
            if all(upload.done or upload.stalled_after for upload in uploads):
                for pid in workers:
                    peak[pid] = max(peak[pid], anonymous_memory_bytes(pid))
                samples += 1
            time.sleep(0.02)
        for upload in uploads:
            upload.join(timeout=30)
        assert samples > 0

        statuses = sorted(upload.response.status or 0 for upload in uploads)
        held = [upload for upload in uploads if upload.response.status == 408]
        # Each worker holds as many whole uploads as fit its bound; the others were refused
        # with 503 and the connection closed, which the client, still sending, mostly sees
        # as a reset (0).
        assert 0 < len(held) <= 2 * (BUFFERED_BODY_BYTES // TEN_MEGABYTES), statuses
        assert set(statuses) <= {408, 503, 0}, statuses
        for upload in held:
            assert (
                upload.response.closed_after < upload.stalled_after + BODY_TIMEOUT + SLACK_SECONDS
            )
        # Each held upload was charged its whole Content-Length when it started, and every
        # other one was refused before its body was read.
        growth = {pid: peak[pid] - before[pid] for pid in workers}
        # The figure README quotes; shown with `pytest --log-cli-level=INFO`.
        logger.info("growth per worker: %s MiB", [round(g / 2**20, 1) for g in growth.values()])
        for pid, grown in growth.items():
            assert grown <= BUFFERED_BODY_BYTES, f"worker {pid} grew by {grown / 2**20:.1f} MiB"
        assert wait_for(lambda: server.worker_pids() == workers, timeout=1)
        # Cut off, the uploads gave their charge back: a whole new one is read and validated.
        assert upload_whole(server.port, TEN_MEGABYTES).status == 422


class TestBodyBudget:
    @pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
    def test_a_declared_body_that_does_not_fit_is_refused_before_it_is_sent(
        self, budget: RunningServer, chunked: bool
    ) -> None:
        held = hold_upload(budget.port, chunked=chunked)

        response = exchange(budget.port, upload_head(HELD))  # not a byte of the body

        assert_refused(response, 503, "too many unfinished request bodies")
        assert response.headers["retry-after"] == "1"
        assert response.closed_after < SLACK_SECONDS
        held.close()

    def test_the_budget_is_whole_again_after_a_held_upload_is_cut_off(
        self, budget: RunningServer
    ) -> None:
        held = hold_upload(budget.port, chunked=False)
        assert read_until_closed(held, started=time.monotonic()).status == 408

        assert wait_for(lambda: upload_whole(budget.port, HELD).status == 422, timeout=1)

    @pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
    def test_the_budget_is_whole_again_after_the_client_of_a_held_upload_hangs_up(
        self, budget: RunningServer, chunked: bool
    ) -> None:
        held = hold_upload(budget.port, chunked=chunked)
        held.close()

        assert wait_for(lambda: upload_whole(budget.port, HELD).status == 422, timeout=1)


def upload_head(length: int, *, chunked: bool = False) -> bytes:
    """The head of a create whose body is `length` bytes (declared, or sent in one chunk)."""
    return post_head("/api/task_runs/", length, chunked=chunked)


def post_head(path: str, length: int, *, chunked: bool = False) -> bytes:
    """The head of a POST of JSON to `path` whose body is `length` bytes."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path.encode()
        + b"Connection: close\r\n"
        + framing
        + b"\r\n\r\n"
    )


def hold_upload(port: int, *, chunked: bool) -> socket.socket:
    """A connection whose upload of HELD bytes has sent all but its end, then stalls."""
    connection = connect(port)
    if chunked:
        connection.sendall(upload_head(HELD, chunked=True) + b"%x\r\n" % HELD + b" " * HELD)
    else:
        connection.sendall(upload_head(HELD) + b" " * (HELD - 1))
    time.sleep(SETTLE_SECONDS)
    return connection


def upload_whole(port: int, length: int) -> RawResponse:
    """A create with a body of `length` spaces sent whole: read, then refused as invalid."""
    return exchange(port, upload_head(length) + b" " * length)


class StalledUpload(threading.Thread):
    """A POST declaring 10 MB that sends one byte less, then waits for the answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.response = RawResponse(None, {}, b"", 0.0)
        self.stalled_after = 0.0
        self.done = False

    def run(self) -> None:
        started = time.monotonic()
        connection = connect(self.port)
        try:
            connection.sendall(
                b"POST /api/task_runs/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % TEN_MEGABYTES
            )
            chunk = b" " * 65536
            remaining = TEN_MEGABYTES - 1
            while remaining:
                size = min(remaining, len(chunk))
                connection.sendall(chunk[:size])
                remaining -= size
            self.stalled_after = time.monotonic() - started
            self.response = read_until_closed(connection, started=started)
        except OSError:
            self.response = _answer_after_reset(connection, started)
        finally:
            self.done = True


def _answer_after_reset(connection: socket.socket, started: float) -> RawResponse:
    """Whatever the server answered before it stopped reading and closed."""
    connection.setblocking(False)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except OSError:
        pass
    connection.close()
    return parse(received, closed_after=time.monotonic() - started)

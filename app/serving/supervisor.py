"""Worker processes: started, watched and replaced by a supervisor with the service's timeouts.

uvicorn 0.54's supervisor pings each worker with one timeout (`timeout_worker_healthcheck`,
5 s by default), from the moment the worker is spawned, and one worker at a time. A worker
that is slow to start on a loaded machine is killed before it serves, again and again; a
stalled worker holds up the checks of the others while it is waited for.

This supervisor keeps uvicorn's processes, signals and restarts, and watches differently: a
new worker has `startup_timeout` to answer its first ping (it answers from a thread of its own
as soon as its interpreter runs, also while it imports and starts the application), and from
then on must answer each ping within `healthcheck_timeout`; no check waits: each worker has at
most one ping outstanding, looked at twice a second. The answer's content (whether the worker's
server has started) is not relied on: uvicorn's worker can report False for good when the
first ping races its start-up.

A worker that exits, whatever the reason, leaves its live gauges (requests in flight,
connections in use) in the metrics directory; the supervisor removes them, as the worker
itself does when it stops cleanly, so that they no longer add to every worker's `/metrics`.

A worker whose supervisor is gone (killed with SIGKILL, or crashed) stops as on SIGTERM: it
would otherwise serve for ever, re-parented, holding the port against the next start (each
worker watches for it: `stop_when_the_supervisor_is_gone` in app/main.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from socket import socket

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from app.observability import metrics
from app.serving.listening import printable_address

logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class WorkerTimeouts:
    """How long a worker may take to answer its first ping, and each one after it."""

    startup: float
    healthcheck: float


@dataclass
class _Watch:
    """What the supervisor knows of one worker."""

    started_at: float
    answered: bool = False
    ping_sent_at: float | None = None


class Supervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, watching its workers with WorkerTimeouts."""

    def __init__(self, config: Config, sockets: list[socket], *, timeouts: WorkerTimeouts) -> None:
        super().__init__(config, sockets)
        self.timeouts = timeouts
        self._watches: dict[Process, _Watch] = {}
        # Whether a worker failed before it could serve, and the server stopped for it.
        self.failed_to_start = False

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        now = time.monotonic()
        # Forget the workers uvicorn itself replaced (on SIGHUP) or retired (SIGTTOU): it
        # has waited for each of them to exit.
        for gone in [process for process in self._watches if process not in self.processes]:
            del self._watches[gone]
            forget_live_gauges(gone)
        for index, process in enumerate(self.processes):
            problem = self._problem(process, now)
            if problem is None:
                continue
            process.kill()
            process.join()
            self._watches.pop(process, None)
            forget_live_gauges(process)
            if process.exitcode == STARTUP_FAILURE:
                # It failed before serving: the application or the socket is broken, and
                # every new worker would fail the same way.
                logger.error("Worker [%s] failed to start; stopping.", process.pid)
                self.failed_to_start = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.warning("Worker [%s] %s; starting another.", process.pid, problem)
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement

    def terminate_all(self) -> None:
        # Close this process's copy of the listening socket first: the workers close theirs
        # as they stop, and while any copy stays open the kernel goes on accepting new
        # connections that nobody will answer (they hang, then are reset).
        for listening in self.sockets:
            listening.close()
        super().terminate_all()

    def _problem(self, process: Process, now: float) -> str | None:
        """Why `process` must be replaced, or None while it is well."""
        watch = self._watches.setdefault(process, _Watch(started_at=now))
        if not process.process.is_alive():
            return f"exited with {process.exitcode}"
        try:
            self._read_answer(process, watch)
            if watch.ping_sent_at is None:
                process.parent_conn.send(b"ping")
                watch.ping_sent_at = now
        except (OSError, EOFError):
            return "no longer answers the supervisor"
        if watch.answered:
            assert watch.ping_sent_at is not None
            if now - watch.ping_sent_at > self.timeouts.healthcheck:
                return f"did not answer the health check within {self.timeouts.healthcheck:g} s"
        elif now - watch.started_at > self.timeouts.startup:
            return f"did not start within {self.timeouts.startup:g} s"
        return None

    @staticmethod
    def _read_answer(process: Process, watch: _Watch) -> None:
        if watch.ping_sent_at is not None and process.parent_conn.poll(0):
            process.parent_conn.recv()
            watch.answered = True
            watch.ping_sent_at = None


def forget_live_gauges(process: Process) -> None:
    """Drop an exited worker's live gauges: it cannot when it was killed or crashed."""
    if process.pid is not None:
        metrics.forget_process(process.pid)


def run(config: Config, listening: socket, *, timeouts: WorkerTimeouts) -> None:
    """Serve `config` on the bound socket `listening`: in this process for one worker,
    supervised processes for more.
    """
    _log_address(config)
    if config.workers <= 1:
        server = Server(config=config)
        server.run(sockets=[listening])
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)
        return
    supervisor = Supervisor(config, [listening], timeouts=timeouts)
    supervisor.run()
    if supervisor.failed_to_start:
        raise SystemExit(STARTUP_FAILURE)


def _log_address(config: Config) -> None:
    # uvicorn logs this line only for a socket it binds itself.
    logger.info(
        "Uvicorn running on http://%s (Press CTRL+C to quit)",
        printable_address(config.host, config.port),
    )

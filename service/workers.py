"""WORKERS > 1: that many worker processes answering on one port, and one view of them all.

The supervisor (`python -m service` with WORKERS > 1) binds one socket per worker to the port
(SO_REUSEPORT) and starts each worker as `python -m service` with its socket's descriptor and a fresh
shared folder in its environment. Each worker is a whole service: its own batcher, its own watch on the
store (so all of them swap to a new version), its own event loop. The kernel spreads new connections
evenly over the workers' sockets.

The shared folder holds prometheus-client's multiprocess files, so /metrics on any worker shows the
whole server (counters and histograms summed over workers, live gauges summed or per process), and one
`ready-<pid>` marker per worker that has loaded its models: /health/ready answers 200 only when every
worker has one. The supervisor restarts a worker that dies (its marker and live gauges removed first),
forwards SIGTERM and SIGINT to the workers, waits for them to finish their requests, and removes the
folder when it exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.http.validate import digits

logger = logging.getLogger("service.workers")

SOCKET_FD_VAR = "SERVICE_WORKER_FD"  # set for workers: the inherited listening socket
SHARED_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable, read when it is imported
WORKERS_VAR = "WORKERS"  # the setting; the supervisor gives its workers the count `auto` resolved to
RESTART_BACKOFF_S = (0.1, 1.0, 2.0, 5.0)  # a worker that keeps dying is restarted ever more slowly
STEADY_AFTER_S = 30.0  # a worker that lived this long died once, not again and again
EXIT_GRACE_S = 5.0  # beyond GRACEFUL_TIMEOUT_S, before a worker that has not exited is killed


def usable_cpus() -> int:
    """The CPUs this process may run on, further bounded by a cgroup (v2) CPU quota (containers)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def worker_socket() -> socket.socket | None:
    """In a worker: the listening socket inherited from the supervisor."""
    descriptor = os.environ.get(SOCKET_FD_VAR)
    return socket.socket(fileno=int(descriptor)) if descriptor else None


@dataclass(frozen=True)
class WorkerGroup:
    """A worker's view of its siblings, through the shared folder."""

    folder: Path
    size: int

    @classmethod
    def from_environment(cls, size: int) -> WorkerGroup | None:
        """This worker's group (of `size`: the WORKERS setting, which the supervisor resolved for its
        workers), or None in a process that is no worker."""
        folder = os.environ.get(SHARED_DIR_VAR)
        if not folder or SOCKET_FD_VAR not in os.environ:
            return None
        return cls(Path(folder), size)

    def ready_count(self) -> int:
        """Markers of live workers; a file of any other name in the folder is not one."""
        pids = (_marker_pid(marker.name) for marker in self.folder.glob("ready-*"))
        return sum(1 for pid in pids if pid is not None and _alive(pid))

    async def announce_ready(self, waiting: Callable[[], list[str]]) -> None:
        """Leave this worker's marker once nothing it serves is waiting for a version."""
        while waiting():
            await asyncio.sleep(0.05)
        (self.folder / f"ready-{os.getpid()}").touch()

    @staticmethod
    async def follow_supervisor() -> None:
        """Stop (gracefully) when the supervisor is gone, rather than serve on as an orphan."""
        supervisor = os.getppid()
        while os.getppid() == supervisor:
            await asyncio.sleep(1.0)
        logger.error("the supervisor (pid %d) is gone; stopping", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)


def _marker_pid(name: str) -> int | None:
    pid = name.removeprefix("ready-")
    return None if pid.startswith("0") else digits(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervise(host: str, port: int, count: int, graceful_timeout_s: float) -> int:
    """Run `count` workers on the port until SIGTERM or SIGINT; the exit status for the process."""
    try:
        supervisor = Supervisor(host, port, count, graceful_timeout_s)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", host, port, exc)
        return 3  # as uvicorn reports a server that did not start
    return supervisor.run()


class Supervisor:
    def __init__(self, host: str, port: int, count: int, graceful_timeout_s: float) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # SO_REUSEPORT would let these sockets join another server's on the same port (same user): a
        # plain bind first fails if anything listens there already.
        socket.create_server((host, port), family=family).close()
        # One listening socket per worker, all on the port (SO_REUSEPORT): the kernel spreads new
        # connections evenly over them, where one shared socket lets the busiest worker take most. This
        # process keeps every socket open, so connections waiting on a dead worker's socket wait for its
        # replacement instead of being reset.
        self.listeners = [
            socket.create_server((host, port), family=family, backlog=2048, reuse_port=True)
            for _ in range(count)
        ]
        self.folder = Path(tempfile.mkdtemp(prefix="fashion-serving-workers-"))
        self.environment = {**os.environ, SHARED_DIR_VAR: str(self.folder), WORKERS_VAR: str(count)}
        self.graceful_timeout_s = graceful_timeout_s
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started: list[float] = []
        self.quick_deaths = [0] * count  # deaths in a row, each soon after its start: the backoff
        self.stopping = False
        logger.info("serving on %s:%d with %d workers", host, port, count, extra={"workers": count})

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            for index in range(len(self.listeners)):
                self.workers.append(self._start(index))
                self.started.append(time.monotonic())
            while not self.stopping:
                time.sleep(0.1)
                for index, worker in enumerate(self.workers):
                    if worker.poll() is not None and not self.stopping:
                        self._replace(index)
            self._wait_for_workers()
            return 0
        finally:
            for listener in self.listeners:
                listener.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        listener = self.listeners[index]
        listener.set_inheritable(True)
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which forwards one
        # SIGTERM (a second signal would make uvicorn skip the graceful wait).
        return subprocess.Popen(
            [sys.executable, "-m", "service"],
            env={**self.environment, SOCKET_FD_VAR: str(listener.fileno())},
            pass_fds=[listener.fileno()],
            start_new_session=True,
        )

    def _replace(self, index: int) -> None:
        dead = self.workers[index]
        _forget(self.folder, dead.pid)
        lived = time.monotonic() - self.started[index]
        self.quick_deaths[index] = self.quick_deaths[index] + 1 if lived < STEADY_AFTER_S else 0
        delay = RESTART_BACKOFF_S[min(self.quick_deaths[index], len(RESTART_BACKOFF_S) - 1)]
        logger.error(
            "worker %d exited with status %s; restarting in %.1f s", dead.pid, dead.returncode, delay
        )
        time.sleep(delay)
        if not self.stopping:
            self.workers[index] = self._start(index)
            self.started[index] = time.monotonic()

    def _stop(self, signum: int, _: object) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.graceful_timeout_s + EXIT_GRACE_S
        for worker in self.workers:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _forget(folder: Path, pid: int) -> None:
    """A dead worker: no readiness marker, and its live gauges no longer counted."""
    from prometheus_client import multiprocess

    (folder / f"ready-{pid}").unlink(missing_ok=True)
    multiprocess.mark_process_dead(pid, str(folder))

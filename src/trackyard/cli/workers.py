"""``trackyard sfu --workers K``: K SFU processes on one host, one per core.

A node is one Python process, so one process uses one core. With ``--workers K`` the command
becomes a small supervisor: it starts K ``trackyard sfu`` processes, each its own node in the
registry with its own slice of the host's resources (``worker_config``: its HTTP API port,
its part of the ICE port range, its metrics port) and the same ``node.host_id`` in its record,
forwards drain signals to them, restarts one that dies while the host is not draining, and
exits when all have exited (0 when every worker drained cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

import structlog

from trackyard.core.config import Config, ConfigError

log = structlog.get_logger(__name__)

SUPERVISOR_PID_ENV = "TRACKYARD_SUPERVISOR_PID"  # set for each worker: who its parent must be
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)  # seconds before restarting a worker that died
STABLE_AFTER = 30.0  # a worker up this long resets its backoff


def default_workers() -> int:
    """``--workers 0``: one per core this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


def host_identity(config: Config) -> str:
    """What the workers of one host share in their records (config, else the host name)."""
    return config.node.host_id or socket.gethostname()


def worker_config(config: Config, index: int, workers: int) -> Config:
    """Worker ``index`` of ``workers``: ports shifted by its index, the ICE port range cut in
    ``workers`` disjoint slices (the last takes the remainder), one host identity."""
    if not 0 <= index < workers:
        raise ConfigError(f"worker index {index} out of range for {workers} workers")
    cfg = config.model_copy(deep=True)
    rtc = cfg.rtc
    total = rtc.port_range_end - rtc.port_range_start + 1
    size = total // workers
    if size < 2:
        raise ConfigError(
            f"rtc.port_range_start..end has {total} ports: too few for {workers} workers"
        )
    start = rtc.port_range_start + index * size
    rtc.port_range_start = start
    rtc.port_range_end = rtc.port_range_end if index == workers - 1 else start + size - 1
    cfg.node.api_port = config.node.api_port + index
    if config.prometheus.port:
        cfg.prometheus.port = config.prometheus.port + index
    cfg.node.host_id = host_identity(config)
    cfg.node.workers = 1
    return cfg


class Supervisor:
    """Runs ``argv`` + ``--worker I/K`` K times; see the module docstring."""

    def __init__(self, argv: Sequence[str], workers: int) -> None:
        self.argv = list(argv)
        self.workers = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.draining = False
        self.forced = False
        self.codes: dict[int, int] = {}

    def command(self, index: int) -> list[str]:
        return [*self.argv, "--worker", f"{index}/{self.workers}"]

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())}
        proc = await asyncio.create_subprocess_exec(*self.command(index), env=env)
        self.procs[index] = proc
        log.info("sfu worker started", worker=index, pid=proc.pid)
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; restart it after a crash unless the host is draining."""
        failures = 0
        while True:
            proc = await self._start(index)
            started = time.monotonic()
            code = await proc.wait()
            self.codes[index] = code
            if self.draining or self.forced:
                log.info("sfu worker exited", worker=index, code=code)
                return
            if time.monotonic() - started > STABLE_AFTER:
                failures = 0
            wait = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            failures += 1
            log.error("sfu worker died; restarting", worker=index, code=code, wait=wait)
            await asyncio.sleep(wait)

    def _signal(self, signum: int) -> None:
        """First signal: every worker drains; second: they stop at once (as one node does)."""
        if self.draining:
            self.forced = True
        self.draining = True
        log.info("forwarding signal to sfu workers", signal=signal.Signals(signum).name)
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, self._signal, signum)
        await asyncio.gather(*(self._keep(i) for i in range(self.workers)))
        return max(self.codes.values(), default=0)


def supervise(argv: Sequence[str], workers: int) -> int:
    """Run the supervisor for ``trackyard sfu`` invoked as ``argv`` (without --workers)."""
    log.info("sfu supervisor", workers=workers, pid=os.getpid())
    return asyncio.run(Supervisor(argv, workers).run())


def die_with_parent() -> bool:
    """A worker drains (SIGTERM) when its supervisor dies, even by ``kill -9``: no orphaned
    nodes keep serving after the host's supervisor is gone (Linux ``PR_SET_PDEATHSIG``).

    False when the supervisor is already gone: it died between starting this process and this
    call, when no death signal can come any more (the worker should exit, having served nothing).
    """
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    return expected is None or os.getppid() == int(expected)


def parse_worker(value: str) -> tuple[int, int]:
    """``I/K`` -> (I, K)."""
    try:
        index, workers = (int(part) for part in value.split("/", 1))
    except ValueError:
        raise ConfigError(f"--worker {value!r}: expected INDEX/COUNT") from None
    return index, workers


def own_command() -> list[str]:
    """How this process was started, to start its workers the same way."""
    return [sys.executable, "-m", "trackyard.cli.main", *sys.argv[1:]]

"""Node load figures for the node record (DESIGN §4).

:class:`StatsCollector` turns the machine's CPU figures plus the caller's counters into a
:class:`~trackyard.core.node.NodeStats`. Rates come from monotonically increasing counters
(bytes and packets in/out) divided by the time since the previous collection; every source of
time and load is injectable, so the collector is deterministic under test.

Test hook: when the environment variable ``TRACKYARD_TEST_LOAD_FILE`` names a file holding
JSON such as ``{"cpu_load": 0.95, "sysload": 1.2}``, those figures replace the measured ones.
The file is read on every collection, so cluster tests can drive a node's load without
burning CPU. A missing or invalid file is ignored.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil
import structlog

from trackyard.core.node import NodeStats

log = structlog.get_logger(__name__)

LOAD_FILE_ENV = "TRACKYARD_TEST_LOAD_FILE"
_OVERRIDABLE = ("cpu_load", "sysload")


@dataclass(frozen=True, slots=True)
class TrafficCounters:
    """Totals since the node started; they only grow (a drop is treated as a reset)."""

    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0


def _system_cpu_load() -> float:
    # interval=None: share of all cores busy since the previous call, without blocking.
    return float(psutil.cpu_percent(interval=None)) / 100.0


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 0.0


def read_load_override(
    environ: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Figures from the test load file, or {} when unset, missing or invalid."""
    path = (os.environ if environ is None else environ).get(LOAD_FILE_ENV)
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        log.debug("ignoring test load file", path=path, error=str(exc))
        return {}
    if not isinstance(raw, dict):
        log.debug("ignoring test load file: not a JSON object", path=path)
        return {}
    out: dict[str, float] = {}
    for name in _OVERRIDABLE:
        value = raw.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            log.debug("ignoring bad figure in test load file", path=path, field=name)
            continue
        out[name] = max(0.0, float(value))
    return out


class StatsCollector:
    """Produces :class:`NodeStats`; call :meth:`collect` once per stats interval."""

    def __init__(
        self,
        *,
        cpus: int | None = None,
        cpu_load: Callable[[], float] = _system_cpu_load,
        loadavg: Callable[[], float] = _loadavg,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cpus = max(1, cpus if cpus is not None else (os.cpu_count() or 1))
        self._cpu_load = cpu_load
        self._loadavg = loadavg
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._environ = environ
        self._last: tuple[float, TrafficCounters] | None = None
        # psutil's first non-blocking reading is meaningless (no previous sample): prime it.
        self._cpu_load()

    def collect(
        self,
        counters: TrafficCounters | None = None,
        *,
        rooms: int = 0,
        clients: int = 0,
        tracks_in: int = 0,
        tracks_out: int = 0,
    ) -> NodeStats:
        """Stats now; rates cover the time since the previous call (zero on the first)."""
        counters = counters or TrafficCounters()
        now = self._monotonic()
        rates = (0.0, 0.0, 0.0, 0.0)
        if self._last is not None:
            then, prev = self._last
            elapsed = now - then
            if elapsed > 0:
                rates = (
                    _rate(prev.bytes_in, counters.bytes_in, elapsed),
                    _rate(prev.bytes_out, counters.bytes_out, elapsed),
                    _rate(prev.packets_in, counters.packets_in, elapsed),
                    _rate(prev.packets_out, counters.packets_out, elapsed),
                )
        self._last = (now, counters)

        cpu_load = min(1.0, max(0.0, self._cpu_load()))
        sysload = max(0.0, self._loadavg()) / self.cpus
        override = read_load_override(self._environ)
        cpu_load = override.get("cpu_load", cpu_load)
        sysload = override.get("sysload", sysload)

        return NodeStats(
            cpus=self.cpus,
            cpu_load=cpu_load,
            sysload=sysload,
            rooms=rooms,
            clients=clients,
            tracks_in=tracks_in,
            tracks_out=tracks_out,
            bytes_in_per_sec=rates[0],
            bytes_out_per_sec=rates[1],
            packets_in_per_sec=rates[2],
            packets_out_per_sec=rates[3],
            updated_at=self._wall_clock(),
        )


def _rate(before: int, after: int, elapsed: float) -> float:
    # A counter that went down was reset (e.g. a forwarder restarted): report no traffic
    # for this interval rather than a negative rate.
    return max(0, after - before) / elapsed

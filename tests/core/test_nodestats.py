"""StatsCollector: rates from counters, load figures, and the test load-file override."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trackyard.core.node import NodeStats
from trackyard.core.nodestats import (
    LOAD_FILE_ENV,
    StatsCollector,
    TrafficCounters,
    read_load_override,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def collector(
    clock: FakeClock | None = None,
    *,
    cpu: float = 0.25,
    load: float = 2.0,
    cpus: int = 4,
    environ: dict[str, str] | None = None,
) -> StatsCollector:
    return StatsCollector(
        cpus=cpus,
        cpu_load=lambda: cpu,
        loadavg=lambda: load,
        monotonic=clock or FakeClock(),
        wall_clock=lambda: 1_700_000_000.0,
        environ=environ if environ is not None else {},
    )


def test_first_collection_has_zero_rates_and_the_callers_counts() -> None:
    stats = collector().collect(
        TrafficCounters(1000, 2000, 10, 20), rooms=2, clients=5, tracks_in=3, tracks_out=7
    )
    assert stats == NodeStats(
        cpus=4,
        cpu_load=0.25,
        sysload=0.5,
        rooms=2,
        clients=5,
        tracks_in=3,
        tracks_out=7,
        updated_at=1_700_000_000.0,
    )


def test_rates_cover_the_time_since_the_previous_collection() -> None:
    clock = FakeClock()
    c = collector(clock)
    c.collect(TrafficCounters(1000, 2000, 10, 20))
    clock.t += 2.0
    stats = c.collect(TrafficCounters(5000, 2000, 30, 120))
    assert stats.bytes_in_per_sec == 2000.0
    assert stats.bytes_out_per_sec == 0.0
    assert stats.packets_in_per_sec == 10.0
    assert stats.packets_out_per_sec == 50.0
    assert stats.bytes_per_sec == 2000.0
    clock.t += 0.5
    stats = c.collect(TrafficCounters(6000, 2000, 30, 120))
    assert stats.bytes_in_per_sec == 2000.0


def test_counter_reset_gives_zero_not_negative() -> None:
    clock = FakeClock()
    c = collector(clock)
    c.collect(TrafficCounters(5000, 5000, 50, 50))
    clock.t += 1.0
    stats = c.collect(TrafficCounters(100, 6000, 0, 60))
    assert stats.bytes_in_per_sec == 0.0
    assert stats.bytes_out_per_sec == 1000.0
    assert stats.packets_in_per_sec == 0.0


def test_no_time_elapsed_gives_zero_rates() -> None:
    c = collector()
    c.collect(TrafficCounters(0, 0, 0, 0))
    assert c.collect(TrafficCounters(10, 10, 10, 10)).bytes_in_per_sec == 0.0


def test_no_counters_means_no_traffic() -> None:
    assert collector().collect().packets_out_per_sec == 0.0


def test_load_figures_are_clamped_and_divided_by_cpus() -> None:
    assert collector(cpu=1.7, load=6.0, cpus=3).collect().cpu_load == 1.0
    assert collector(cpu=-0.1).collect().cpu_load == 0.0
    assert collector(load=6.0, cpus=3).collect().sysload == 2.0


def test_real_sources_give_plausible_figures() -> None:
    c = StatsCollector(environ={})
    stats = c.collect()
    assert stats.cpus == (os.cpu_count() or 1)
    assert 0.0 <= stats.cpu_load <= 1.0
    assert stats.sysload >= 0.0


def test_load_file_overrides_measured_figures(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    env = {LOAD_FILE_ENV: str(path)}
    c = collector(environ=env)
    path.write_text(json.dumps({"cpu_load": 0.95, "sysload": 1.2}))
    stats = c.collect()
    assert (stats.cpu_load, stats.sysload) == (0.95, 1.2)
    # Read again on every collection: tests change the load while the node runs.
    path.write_text(json.dumps({"sysload": 0.1}))
    stats = c.collect()
    assert (stats.cpu_load, stats.sysload) == (0.25, 0.1)


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing file
        "not json",
        "[1, 2]",
        '{"cpu_load": "high", "sysload": null}',
        '{"cpu_load": true}',
        '{"cpu_load": NaN}',
        "",
    ],
)
def test_bad_load_file_is_ignored(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "load.json"
    if content is not None:
        path.write_text(content)
    stats = collector(environ={LOAD_FILE_ENV: str(path)}).collect()
    assert (stats.cpu_load, stats.sysload) == (0.25, 0.5)


def test_load_file_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "load.json"
    path.write_text('{"cpu_load": 0.5}')
    monkeypatch.setenv(LOAD_FILE_ENV, str(path))
    assert read_load_override() == {"cpu_load": 0.5}
    c = StatsCollector(cpu_load=lambda: 0.0, loadavg=lambda: 0.0)
    assert c.collect().cpu_load == 0.5
    monkeypatch.delenv(LOAD_FILE_ENV)
    assert read_load_override() == {}

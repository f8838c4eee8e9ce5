"""``trackyard sfu --workers K``: how one host's resources are cut between its K nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trackyard.cli.workers import SUPERVISOR_PID_ENV, parse_worker, worker_config
from trackyard.core.config import Config, ConfigError


def config(**node: object) -> Config:
    return Config.load(
        None,
        body=(
            "keys: {k: secretsecretsecretsecretsecretsecret}\n"
            "rtc: {port_range_start: 50000, port_range_end: 50999}\n"
            "prometheus: {port: 6789}\n"
            f"node: {dict(node) or {}}\n"
        ),
    )


def test_workers_get_disjoint_port_slices_covering_the_range() -> None:
    cfg = config(api_port=7881, host_id="host-a")
    slices = [worker_config(cfg, i, 3) for i in range(3)]
    ranges = [(c.rtc.port_range_start, c.rtc.port_range_end) for c in slices]
    assert ranges == [(50000, 50332), (50333, 50665), (50666, 50999)]
    assert [c.node.api_port for c in slices] == [7881, 7882, 7883]
    assert [c.prometheus.port for c in slices] == [6789, 6790, 6791]
    assert {c.node.host_id for c in slices} == {"host-a"}
    assert all(c.node.workers == 1 for c in slices)
    assert (cfg.rtc.port_range_start, cfg.node.api_port) == (50000, 7881)  # original untouched


def test_host_identity_defaults_to_the_host_name() -> None:
    import socket

    assert worker_config(config(), 0, 2).node.host_id == socket.gethostname()


def test_metrics_stay_off_when_the_config_has_none() -> None:
    cfg = config()
    cfg.prometheus.port = 0
    assert worker_config(cfg, 1, 2).prometheus.port == 0


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2)])
def test_out_of_range_worker_is_refused(index: int, count: int) -> None:
    with pytest.raises(ConfigError):
        worker_config(config(), index, count)


def test_too_small_a_port_range_is_refused() -> None:
    cfg = config()
    cfg.rtc.port_range_end = cfg.rtc.port_range_start + 2
    with pytest.raises(ConfigError, match="too few"):
        worker_config(cfg, 0, 2)


def test_worker_option_parses() -> None:
    assert parse_worker("1/4") == (1, 4)
    with pytest.raises(ConfigError):
        parse_worker("x")


def test_a_worker_whose_supervisor_is_already_gone_exits(tmp_path: Path) -> None:
    """The supervisor died between starting the worker and the worker asking for a death signal:
    no signal will come, so the worker must notice by itself and not serve as an orphan."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = tmp_path / "config.yaml"
    path.write_text("keys: {k: secretsecretsecretsecretsecretsecret}\n")
    env = {**os.environ, SUPERVISOR_PID_ENV: str(gone.pid)}
    argv = ["-m", "trackyard.cli.main", "sfu", "--config", str(path), "--worker", "0/2"]
    done = subprocess.run(
        [sys.executable, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "supervisor is gone" in done.stderr

"""The deployments drain edges as the edge expects: a rolling update starts a new edge before
stopping an old one, the old one is taken out of the load balancer (preStop wait, readiness on
``/readyz``) before its SIGTERM, and is not killed before ``signal.drain_deadline``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.core.test_deploy_configs import (
    CHART,
    _duration,
    _k8s_config,
    _trackyard_services,
    _workloads,
)
from tests.core.test_helm_chart import SCENARIOS, Rendered


def _check_edge_rollout(deployment: dict[str, Any], drain_deadline: float) -> None:
    assert deployment["kind"] == "Deployment"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1, rolling
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # the preStop wait counts against the grace period, then the drain may take its deadline
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain_deadline


def test_k8s_edges_roll_over_with_their_drain() -> None:
    deadline = _k8s_config().signal.drain_deadline
    assert 0 < deadline < 30
    _check_edge_rollout(_workloads()["trackyard-signal"], deadline)


def test_compose_edges_get_their_drain_deadline() -> None:
    edges = [
        (svc, cfg) for svc, cfg in _trackyard_services().values() if svc["command"] == ["signal"]
    ]
    assert edges
    for svc, cfg in edges:
        assert _duration(svc["stop_grace_period"]) > cfg.signal.drain_deadline


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_edges_roll_over_with_their_drain(chart: helm.Chart, scenario: str) -> None:
    rendered = Rendered(chart, SCENARIOS[scenario])
    deadline = rendered.config().signal.drain_deadline
    _check_edge_rollout(rendered.workloads()[f"{rendered.name}-signal"], deadline)

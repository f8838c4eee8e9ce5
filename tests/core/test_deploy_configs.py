"""The configs shipped for Kubernetes and docker compose are valid Trackyard configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from trackyard.core.config import Config
from trackyard.router.selector import build_selector

ROOT = Path(__file__).resolve().parents[2]


def test_k8s_configmap_is_valid() -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "config.yaml").read_text()))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = Config.from_yaml(configmap["data"]["config.yaml"])
    assert cfg.redis.enabled and cfg.node.drain_deadline > 0
    build_selector(cfg.node_selector, cfg.limit, cfg.region)  # what the router checks at start


def test_compose_configs_are_valid() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        text = (service.get("environment") or {}).get("LIVEKIT_CONFIG")
        if text:
            cfg = Config.from_yaml(text)
            assert cfg.redis.enabled, name

"""The shipped deployment files: docker compose (a two-region demo cluster) and k8s/ (plain
manifests, validated against the Kubernetes schemas of ``kubernetes-validate``, offline), with
the same checks on the Trackyard configs inside them; and the Helm chart's values (rendered in
test_helm_chart.py)."""

from __future__ import annotations

import itertools
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from trackyard.cli.workers import worker_config
from trackyard.core.config import Config
from trackyard.router.selector import build_selector

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"  # the schema set the manifests are checked against
CHART = ROOT / "deploy" / "helm" / "trackyard"
SECRETS = {"LIVEKIT_KEYS": "APIchangeme: change-me-to-a-secret-of-at-least-32-chars"}


def check_config(cfg: Config, role: str) -> None:
    """What every cluster config must hold, wherever it is deployed."""
    assert cfg.redis.enabled, f"{role}: a cluster needs redis"
    assert cfg.keys and all(len(s) >= 32 for s in cfg.keys.values()), f"{role}: keys"
    assert cfg.prometheus.port, f"{role}: metrics are served on prometheus.port only"
    assert cfg.prometheus.port not in (cfg.port, cfg.node.api_port, cfg.router.port), role
    build_selector(cfg.node_selector, cfg.limit, cfg.region)  # what the router checks at start
    if role == "sfu":
        assert cfg.node.drain_deadline > 0, "an SFU must move its participants eventually"
        assert cfg.rtc.port_range_start < cfg.rtc.port_range_end


def _duration(text: str) -> float:
    """Compose durations (``1m30s``, ``11m``, ``10s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


# -- docker compose ----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment."""
    assert "${" not in re.sub(r"\$\{\w+:-[^}]*\}", "", text), text
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _trackyard_services() -> dict[str, tuple[dict[str, Any], Config]]:
    out = {}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        if "LIVEKIT_CONFIG" in env:
            cfg = Config.load(env={"LIVEKIT_CONFIG": _interpolate(env["LIVEKIT_CONFIG"])})
            out[name] = (service, cfg)
    return out


def test_compose_is_a_two_region_cluster() -> None:
    services = _trackyard_services()
    roles = Counter((svc["command"][0], cfg.region) for svc, cfg in services.values())
    for region in ("us-east", "eu-west"):
        assert roles[("sfu", region)] == 2, roles
        assert roles[("signal", region)] >= 1, roles
        assert roles[("router", region)] >= 1, roles
    assert "redis" in _compose()["services"]
    for name, (svc, cfg) in services.items():
        check_config(cfg, svc["command"][0])
        assert "redis" in svc["depends_on"], name


def test_compose_redis_is_reachable_from_every_network() -> None:
    """Host-networked SFUs dial Redis on the host's loopback: Redis must publish that port
    there; the others dial it by service name on the compose network."""
    compose = _compose()
    published = compose["services"]["redis"].get("ports", [])
    for name, (svc, cfg) in _trackyard_services().items():
        host, _, port = cfg.redis.address.rpartition(":")
        if svc.get("network_mode") == "host":
            assert host in ("127.0.0.1", "localhost"), name
            assert f"127.0.0.1:{port}:6379" in published, (name, published)
        else:
            assert host in compose["services"], (name, host)


def test_compose_host_network_processes_do_not_collide() -> None:
    ports: list[int] = []
    ranges: list[tuple[int, int]] = []
    for name, (svc, cfg) in _trackyard_services().items():
        if svc.get("network_mode") != "host":
            continue
        assert svc["command"] == ["sfu"], name
        assert svc["environment"].get("NODE_IP"), f"{name}: advertise the host's address"
        workers = cfg.node.workers or 1  # `trackyard sfu --workers K`: K nodes, K slices
        for worker in (worker_config(cfg, i, workers) for i in range(workers)):
            ports += [worker.node.api_port, worker.prometheus.port]
            ranges.append((worker.rtc.port_range_start, worker.rtc.port_range_end))
        # the container gets its SIGKILL only after the drain deadline moved everyone
        assert _duration(svc["stop_grace_period"]) > cfg.node.drain_deadline, name
    assert len(ports) == len(set(ports)), ports
    sfus = sum(1 for svc, _ in _trackyard_services().values() if svc["command"] == ["sfu"])
    assert len(ranges) > sfus  # one of them runs `--workers`: more nodes than SFU services
    ranges.sort()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), ranges


def test_compose_coturn_accepts_the_sfus_turn_credentials() -> None:
    coturn = _compose()["services"]["coturn"]
    assert coturn["network_mode"] == "host"
    args = _coturn_args([_interpolate(a) for a in coturn["command"]])
    assert "use-auth-secret" in args
    relay = (int(args["min-port"]), int(args["max-port"]))
    sfus = [cfg for svc, cfg in _trackyard_services().values() if svc["command"] == ["sfu"]]
    assert sfus
    for cfg in sfus:
        assert {s.protocol for s in cfg.rtc.turn_servers} == {"udp", "tcp"}
        for server in cfg.rtc.turn_servers:
            assert server.secret == args["static-auth-secret"]
            assert server.port == int(args["listening-port"])
            assert server.host == args["external-ip"]
        assert relay[1] < cfg.rtc.port_range_start or relay[0] > cfg.rtc.port_range_end


def test_compose_edges_find_routers_of_the_cluster() -> None:
    services = _trackyard_services()
    for name, (svc, cfg) in services.items():
        if svc["command"] != ["signal"]:
            continue
        assert cfg.router.urls, name
        for url in cfg.router.urls:
            host, port = re.fullmatch(r"http://([\w-]+):(\d+)", url).groups()  # type: ignore[union-attr]
            target = services[host]
            assert target[0]["command"] == ["router"] and target[1].router.port == int(port)
        assert any(p.endswith(":7880") for p in svc["ports"]), name


# -- Kubernetes --------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


TURN_SECRET_PATH = "/etc/trackyard/turn-secret"  # the projected Secret key in every pod


def _k8s_secret() -> dict[str, str]:
    secret = next(d for d in _k8s_docs() if d["kind"] == "Secret")
    data: dict[str, str] = secret["stringData"]
    return data


def _k8s_config() -> Config:
    configmap = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")
    text = configmap["data"]["config.yaml"]
    with tempfile.TemporaryDirectory() as tmp:  # the mounted TURN secret, as the pods see it
        secret = Path(tmp) / "turn-secret"
        secret.write_text(_k8s_secret()["TURN_SECRET"])
        secret.chmod(0o440)
        text = text.replace(TURN_SECRET_PATH, str(secret))
        return Config.load(env={"LIVEKIT_CONFIG": text, **SECRETS})


@pytest.mark.parametrize("doc", _k8s_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_manifest_matches_the_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_mistakes() -> None:
    bad = next(d for d in _k8s_docs() if d["kind"] == "DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(bad))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 5  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_k8s_config_is_valid() -> None:
    cfg = _k8s_config()
    for role in ("sfu", "signal", "router"):
        check_config(cfg, role)


def _workloads() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d for d in _k8s_docs() if d["kind"] in ("Deployment", "DaemonSet")
    }


def test_k8s_workloads_have_probes_and_resources() -> None:
    for name, workload in _workloads().items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container.get("readinessProbe") and container.get("livenessProbe"), name
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), name


def test_k8s_sfu_grace_period_outlasts_the_drain_deadline() -> None:
    sfu = _workloads()["trackyard-sfu"]["spec"]["template"]["spec"]
    assert sfu["terminationGracePeriodSeconds"] > _k8s_config().node.drain_deadline
    assert sfu["hostNetwork"] is True
    env = {e["name"]: e for e in sfu["containers"][0]["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


def test_k8s_disruption_budgets_and_autoscalers() -> None:
    docs = _k8s_docs()
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    assert {"trackyard-sfu", "trackyard-signal", "trackyard-router"} <= budgets
    scaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert scaled == {"trackyard-signal", "trackyard-router"}  # SFUs: one per host (DaemonSet)
    workloads = _workloads()
    for name in scaled:
        assert workloads[name]["kind"] == "Deployment"


def test_k8s_metrics_port_is_scraped_not_public() -> None:
    port = _k8s_config().prometheus.port
    for name, workload in _workloads().items():
        if not name.startswith("trackyard-"):
            continue
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
    for svc in (d for d in _k8s_docs() if d["kind"] == "Service"):
        assert all(p["targetPort"] != port for p in svc["spec"]["ports"]), svc["metadata"]


def _coturn_args(args: list[str]) -> dict[str, str]:
    """``--key=value`` / ``--flag`` command-line arguments of turnserver."""
    out = {}
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        out[key] = value
    return out


def test_k8s_coturn_accepts_the_sfus_turn_credentials() -> None:
    cfg = _k8s_config()
    assert cfg.rtc.turn_servers and {s.protocol for s in cfg.rtc.turn_servers} >= {"udp", "tcp"}
    turn = _workloads()["coturn"]
    spec = turn["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = _coturn_args(container["args"])
    assert "use-auth-secret" in args
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    # coturn's static-auth-secret and the SFUs' secret_file are the same Secret key
    assert args["static-auth-secret"] == "$(TURN_SECRET)"
    assert env["TURN_SECRET"]["secretKeyRef"] == {"name": "trackyard-keys", "key": "TURN_SECRET"}
    for server in cfg.rtc.turn_servers:
        assert server.secret == _k8s_secret()["TURN_SECRET"]
        assert server.port == int(args["listening-port"])
    for name in ("trackyard-sfu", "trackyard-signal", "trackyard-router"):
        (volume,) = _workloads()[name]["spec"]["template"]["spec"]["volumes"]
        items = [s["secret"]["items"] for s in volume["projected"]["sources"] if "secret" in s]
        assert items == [[{"key": "TURN_SECRET", "path": "turn-secret"}]], name
        assert volume["projected"]["defaultMode"] & 0o007 == 0, name  # LiveKit refuses others
    # relays on the host network, outside the SFUs' UDP range
    assert spec["hostNetwork"] is True
    relay = (int(args["min-port"]), int(args["max-port"]))
    assert relay[1] < cfg.rtc.port_range_start or relay[0] > cfg.rtc.port_range_end


# -- Helm chart ----------------------------------------------------------------------------


def _values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def _flatten(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict) or not tree:
        return {prefix}
    out: set[str] = set()
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


# LiveKit chart keys (tests/fixtures/livekit/helm-values.yaml) the chart takes with the same
# meaning; the others (TURN load balancer, GCP backend config, ...) have no counterpart.
MAPPED_LIVEKIT_KEYS = {
    "replicaCount",
    "image.repository",
    "image.pullPolicy",
    "imagePullSecrets",
    "terminationGracePeriodSeconds",
    "livekit.port",
    "livekit.log_level",
    "livekit.rtc.port_range_start",
    "livekit.rtc.port_range_end",
    "livekit.redis",
    "livekit.keys",
    "storeKeysInSecret.enabled",
    "storeKeysInSecret.existingSecret",
    "storeKeysInSecret.keys",
    "nameOverride",
    "fullnameOverride",
    "loadBalancer.type",
    "loadBalancer.servicePort",
    "loadBalancer.annotations",
    "autoscaling.enabled",
    "autoscaling.minReplicas",
    "autoscaling.maxReplicas",
    "autoscaling.targetCPUUtilizationPercentage",
    "nodeSelector",
    "resources",
    "serviceAccount.create",
    "serviceAccount.annotations",
    "serviceAccount.name",
    "podHostNetwork",
    "podAnnotations",
    "podSecurityContext",
    "securityContext",
    "tolerations",
    "affinity",
    "serviceMonitor.create",
    "serviceMonitor.annotations",
    "serviceMonitor.name",
    "serviceMonitor.interval",
}


def _has(keys: set[str], key: str) -> bool:
    return any(k == key or k.startswith(key + ".") for k in keys)


def test_helm_values_take_livekit_chart_keys() -> None:
    fixture = ROOT / "tests/fixtures/livekit/helm-values.yaml"
    livekit = _flatten(yaml.safe_load(fixture.read_text()))
    ours = _flatten(_values())
    assert all(_has(livekit, k) for k in MAPPED_LIVEKIT_KEYS)  # they are LiveKit's keys
    missing = {k for k in MAPPED_LIVEKIT_KEYS if not _has(ours, k)}
    assert not missing, missing


def test_helm_templates_use_only_defined_values() -> None:
    """Helm renders an undefined ``.Values.x.y`` as empty, without an error, and a branch no
    rendering in test_helm_chart.py takes is never seen there: every value a template reads
    must be defined in values.yaml."""
    ours = _flatten(_values())
    templates = list((CHART / "templates").glob("*.yaml")) + list(
        (CHART / "templates").glob("*.tpl")
    )
    assert len(templates) >= 5
    used = set()
    for path in templates:
        used |= set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", path.read_text()))
    undefined = {u for u in used if not _has(ours, u)}
    assert not undefined, undefined
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "trackyard"

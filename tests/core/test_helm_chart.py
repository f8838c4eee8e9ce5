"""The Helm chart (deploy/helm/trackyard) rendered by Helm itself (helm-python-sdk: Helm's Go
SDK as a native library, no binary, no cluster), with its defaults and with LiveKit-chart-style
values; every document checked against the Kubernetes schemas, the Trackyard config it carries
loaded as the services load it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.core.test_deploy_configs import CHART, K8S_VERSION, ROOT, check_config
from trackyard.core.config import Config

SECRET = "s" * 40  # a stand-in for the keys an existing Secret would hold

# LiveKit's own chart values (tests/fixtures/livekit/helm-values.yaml) with what a cluster needs
# filled in, as someone moving a LiveKit release over would.
_LIVEKIT_FILE = yaml.safe_load((ROOT / "tests/fixtures/livekit/helm-values.yaml").read_text())
_LIVEKIT_FILE["image"]["repository"] = "trackyard"
_LIVEKIT_FILE["livekit"]["redis"] = {"address": "redis-master.redis.svc:6379"}
_LIVEKIT_FILE["livekit"]["keys"] = {"APIlivekit": "l" * 40}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "livekit-style": {
        "replicaCount": 3,
        "podHostNetwork": False,
        "fullnameOverride": "lk",
        "livekit": {"redis": {"address": "redis-master.redis.svc:6379"}, "region": "eu-west"},
        "autoscaling": {"enabled": False, "minReplicas": 1},
        "loadBalancer": {"type": "disable"},
        "storeKeysInSecret": {"enabled": True, "keys": {"APIprod": "p" * 40, "APIold": "o" * 40}},
        "serviceMonitor": {"create": True, "annotations": {"team": "media"}},
        "serviceAccount": {"create": True, "annotations": {"iam/role": "trackyard"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/owner": "media"},
        "nodeSelector": {"node.kubernetes.io/instance-type": "c5.2xlarge"},
        "tolerations": [{"key": "media", "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsNonRoot": True},
        "podSecurityContext": {"fsGroup": 1000},
    },
    "existing-secret": {
        "terminationGracePeriodSeconds": 900,
        "livekit": {"node": {"drain_deadline": 600}, "keys": None},
        "storeKeysInSecret": {"enabled": True, "existingSecret": "trackyard-keys-from-vault"},
        "autoscaling": {"minReplicas": 3, "maxReplicas": 20},
        "loadBalancer": {"type": "NodePort", "servicePort": 7880, "annotations": {"a": "b"}},
        "serviceAccount": {"name": "existing-account"},
    },
    "livekit-values-file": _LIVEKIT_FILE,
}

WORKLOAD_KINDS = ("Deployment", "DaemonSet")
NOT_IN_SCHEMAS = {"monitoring.coreos.com/v1"}  # the Prometheus operator's CRDs


class Rendered:
    """One rendering: its documents and the values Helm used (defaults coalesced)."""

    def __init__(self, chart: helm.Chart, overrides: dict[str, Any]) -> None:
        manifests = chart.render(overrides, name="demo", namespace="prod")
        self.values = chart.merge_values(overrides)
        self.docs: list[dict[str, Any]] = [
            d for text in manifests.values() for d in yaml.safe_load_all(text) if d
        ]
        self.name = self.values["fullnameOverride"] or "trackyard"

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((d for d in self.kind(kind) if d["metadata"]["name"] == name), None)

    def workloads(self) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] in WORKLOAD_KINDS}

    def pod(self, role: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.workloads()[f"{self.name}-{role}"]["spec"]["template"]["spec"]
        return spec

    def pod_labels(self, role: str) -> dict[str, str]:
        workload = self.workloads()[f"{self.name}-{role}"]
        labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
        return labels

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, workload in self.workloads().items():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                yield name, container

    def config_text(self) -> str:
        text: str = self.kind("ConfigMap")[0]["data"]["config.yaml"]
        return text

    def keys_env(self) -> dict[str, str]:
        """LIVEKIT_KEYS as the pods get it: the chart's Secret, or a stand-in for an existing
        one; none when the keys are in the config."""
        keys = self.values["storeKeysInSecret"]
        if not keys["enabled"]:
            return {}
        if keys["existingSecret"]:
            return {"LIVEKIT_KEYS": f"APIvault: {SECRET}"}
        secret = self.get("Secret", f"{self.name}-keys")
        assert secret is not None
        return {"LIVEKIT_KEYS": secret["stringData"]["LIVEKIT_KEYS"]}

    def config(self) -> Config:
        return Config.load(env={"LIVEKIT_CONFIG": self.config_text(), **self.keys_env()})


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module", params=list(SCENARIOS))
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    return Rendered(chart, SCENARIOS[request.param])


def test_chart_is_loaded_by_helm(chart: helm.Chart) -> None:
    assert chart.name == "trackyard" and chart.metadata["apiVersion"] == "v2"
    report = helm.lint(CHART, strict=True, kube_version=f"v{K8S_VERSION}")
    assert not report["errors"], report
    assert all(m["severity"] < 2 for m in report["messages"]), report  # infos: icon, ...


def test_every_document_matches_the_schema(rendered: Rendered) -> None:
    seen = set()
    for doc in rendered.docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
        if doc["apiVersion"] in NOT_IN_SCHEMAS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"ConfigMap", "Service", "PodDisruptionBudget"} <= {k for k, _ in seen}


def test_schema_check_catches_a_rendered_mistake(chart: helm.Chart) -> None:
    """The check above would see a template bug: a quoted port, an unknown field."""
    sfu = next(d for d in Rendered(chart, {}).docs if d["kind"] == "DaemonSet")
    sfu["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "7881"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sfu, K8S_VERSION, strict=True)


def test_config_loads_as_the_services_load_it(rendered: Rendered) -> None:
    cfg = rendered.config()
    for role in ("sfu", "signal", "router"):
        check_config(cfg, role)
    values = rendered.values["livekit"]
    assert cfg.redis.address == values["redis"]["address"]
    assert cfg.region == values.get("region", "")
    assert cfg.bind_addresses == ["0.0.0.0"]  # reachable from other pods
    # the edges reach the routers through the chart's router Service
    router = rendered.get("Service", f"{rendered.name}-router")
    assert router is not None
    assert cfg.router.urls == [
        f"http://{rendered.name}-router:{router['spec']['ports'][0]['port']}"
    ]
    assert cfg.router.port == router["spec"]["ports"][0]["targetPort"]
    in_config = "keys" in yaml.safe_load(rendered.config_text())
    assert in_config is not rendered.values["storeKeysInSecret"]["enabled"]


def test_workloads_have_probes_and_resources(rendered: Rendered) -> None:
    workloads = rendered.workloads()
    assert {f"{rendered.name}-{r}" for r in ("sfu", "signal", "router")} == set(workloads)
    for name, container in rendered.containers():
        ports = {p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports, (name, probe)
        resources = container["resources"]
        assert resources["requests"] and resources["limits"], name
        assert {"name": "config", "mountPath": "/etc/trackyard"} in container["volumeMounts"]
        assert container["args"][1:] == ["--config", "/etc/trackyard/config.yaml"], name


def test_sfu_outlasts_its_drain_and_advertises_the_right_address(rendered: Rendered) -> None:
    values = rendered.values
    pod = rendered.pod("sfu")
    assert pod["terminationGracePeriodSeconds"] > rendered.config().node.drain_deadline
    assert pod["terminationGracePeriodSeconds"] == values["terminationGracePeriodSeconds"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    field = env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"]
    sfu = rendered.workloads()[f"{rendered.name}-sfu"]
    if values["podHostNetwork"]:
        assert pod["hostNetwork"] is True and field == "status.hostIP"
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # still resolves redis, routers
        assert sfu["kind"] == "DaemonSet"
    else:
        assert pod["hostNetwork"] is False and field == "status.podIP"
        assert sfu["kind"] == "Deployment" and sfu["spec"]["replicas"] == values["replicaCount"]


def test_autoscalers_exactly_when_autoscaling(rendered: Rendered) -> None:
    scaling = rendered.values["autoscaling"]
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d for d in rendered.kind("HorizontalPodAutoscaler")
    }
    workloads = rendered.workloads()
    scaled = {f"{rendered.name}-signal", f"{rendered.name}-router"}
    if scaling["enabled"]:
        assert set(hpas) == scaled  # SFUs: one per host, or replicaCount
        for name, hpa in hpas.items():
            assert workloads[name]["kind"] == "Deployment"
            assert "replicas" not in workloads[name]["spec"]  # the HPA's, kept at upgrades
            assert hpa["spec"]["minReplicas"] == scaling["minReplicas"]
            assert hpa["spec"]["maxReplicas"] == scaling["maxReplicas"]
    else:
        assert not hpas
        for name in scaled:
            assert workloads[name]["spec"]["replicas"] == scaling["minReplicas"]


def test_disruption_budgets_never_block_a_drain(rendered: Rendered) -> None:
    workloads = rendered.workloads()
    budgets = rendered.kind("PodDisruptionBudget")
    assert len(budgets) == 3
    for budget in budgets:
        labels = budget["spec"]["selector"]["matchLabels"]
        target = next(
            w for w in workloads.values() if w["spec"]["selector"]["matchLabels"] == labels
        )
        replicas = target["spec"].get("replicas", rendered.values["autoscaling"]["minReplicas"])
        if "minAvailable" in budget["spec"]:
            assert target["kind"] == "Deployment" and replicas > budget["spec"]["minAvailable"]
        else:
            assert budget["spec"]["maxUnavailable"] == 1


def test_signal_service_follows_load_balancer(rendered: Rendered) -> None:
    lb = rendered.values["loadBalancer"]
    service = rendered.get("Service", f"{rendered.name}-signal")
    if lb["type"] == "disable":
        assert service is None
        return
    assert service is not None
    assert service["spec"]["type"] == lb["type"]
    assert service["metadata"].get("annotations", {}) == lb["annotations"]
    port = service["spec"]["ports"][0]
    assert port["port"] == lb["servicePort"] and port["targetPort"] == rendered.config().port
    assert service["spec"]["selector"] == rendered.pod_labels("signal")


def test_metrics_are_scraped_not_served(rendered: Rendered) -> None:
    port = rendered.config().prometheus.port
    for name, workload in rendered.workloads().items():
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
        assert rendered.values["podAnnotations"].items() <= annotations.items(), name
    for service in rendered.kind("Service"):
        assert all(p["targetPort"] != port for p in service["spec"]["ports"])
    monitors = rendered.kind("PodMonitor")
    if not rendered.values["serviceMonitor"]["create"]:
        assert not monitors
        return
    assert len(monitors) == 3
    for monitor in monitors:
        role = monitor["metadata"]["name"].rsplit("-", 1)[1]
        assert monitor["spec"]["selector"]["matchLabels"] == rendered.pod_labels(role)
        container = rendered.pod(role)["containers"][0]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named[monitor["spec"]["podMetricsEndpoints"][0]["port"]] == port


def test_keys_reach_every_container(rendered: Rendered) -> None:
    keys = rendered.values["storeKeysInSecret"]
    secrets = rendered.kind("Secret")
    for name, container in rendered.containers():
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
        if not keys["enabled"]:
            assert not refs, name
        else:
            assert refs == [keys["existingSecret"] or f"{rendered.name}-keys"], name
    # the chart makes the Secret unless one exists; its keys are what the services use
    assert len(secrets) == (1 if keys["enabled"] and not keys["existingSecret"] else 0)
    if secrets:
        assert rendered.config().keys == (keys["keys"] or rendered.values["livekit"]["keys"])


def test_pods_run_as_the_service_account(rendered: Rendered) -> None:
    account = rendered.values["serviceAccount"]
    made = rendered.kind("ServiceAccount")
    expected = account["name"] or (rendered.name if account["create"] else None)
    if account["create"]:
        assert [d["metadata"]["name"] for d in made] == [expected]
        assert made[0]["metadata"].get("annotations", {}) == account["annotations"]
    else:
        assert not made
    for role in ("sfu", "signal", "router"):
        pod = rendered.pod(role)
        assert pod.get("serviceAccountName") == expected, role
        assert pod.get("imagePullSecrets", []) == rendered.values["imagePullSecrets"]
        assert pod.get("tolerations", []) == rendered.values["tolerations"]
        assert pod.get("nodeSelector", {}) == rendered.values["nodeSelector"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loadBalancer": {"type": "alb"}}, "loadBalancer.type: alb"),
        (
            {"storeKeysInSecret": {"enabled": True}, "livekit": {"keys": None}},
            "storeKeysInSecret",
        ),
    ],
    ids=["livekit-cloud-load-balancer", "secret-without-keys"],
)
def test_values_without_a_meaning_here_fail_the_render(
    chart: helm.Chart, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(overrides, name="demo", namespace="prod")

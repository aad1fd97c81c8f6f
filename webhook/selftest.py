"""`concurrency-injector selftest`: does the API server reach the webhook, end to end?

With `failurePolicy: Ignore` (the chart's default, by decision) a webhook the API server cannot
reach admits every pod unpatched and nobody notices. The self-test asks the API server to create
a gunicorn pod with a CPU limit in a namespace labelled for injection, as a server-side dry run
(nothing is stored), and fails unless the pod comes back patched: it checks the whole path (the
namespace selector, the Service and its endpoints, the NetworkPolicy, the caBundle, the server)
the way a real pod takes it. The chart runs it as its `helm test` hook.

Exit codes: 0 the webhook patched the pod (or, in audit mode, said what it would set); 1 the pod
came back unpatched (the message names the likely causes); 3 the API server could not be asked
(no access, no such namespace, RBAC).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from webhook.admission.review import FAIL_OPEN_WARNING
from webhook.core import keys
from webhook.core.types import Obj
from webhook.exitcodes import EXIT_ENVIRONMENT, EXIT_OK

DEFAULT_IMAGE = "concurrency-injector-selftest:0"
CPU = "2"
# RFC 7234 warn-code, warn-agent, quoted text: how the API server sends admission warnings.
WARNING = re.compile(r'^\d{3} \S+ "((?:[^"\\]|\\.)*)"')
# The API server refuses pods until the namespace's `default` ServiceAccount exists, which a
# controller makes moments after the namespace: retried, as are namespaces still being deleted.
RETRY_WHEN = ("error looking up service account", "because it is being terminated")
HTTP_NOT_FOUND, HTTP_FORBIDDEN = 404, 403
RBAC_SETTLE = 5.0  # seconds a refusal is retried, while a new RoleBinding takes effect


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "selftest",
        help="dry-run a pod in a labelled namespace; fail unless the webhook patched it",
        description="Ask the API server to create a gunicorn pod with a CPU limit in NAMESPACE as "
        "a server-side dry run, and exit 0 only if it comes back patched by the webhook (1: "
        "unpatched, with the likely causes; 3: the API server could not be asked). The chart's "
        "`helm test` runs it.",
    )
    parser.add_argument(
        "-n", "--namespace", required=True, help="a namespace labelled for injection"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image of the dry-run pod")
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="credentials to use (default: the pod's service account in a cluster, else "
        "$KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to retry while a new namespace gets its default ServiceAccount",
    )
    parser.add_argument(
        "--webhook-config", metavar="NAME", help="the MutatingWebhookConfiguration, for the message"
    )


@dataclass
class Outcome:
    """What the dry run showed."""

    passed: bool
    message: str
    warnings: list[str] = field(default_factory=list)


def probe_pod(image: str) -> Obj:
    """A gunicorn pod with a CPU limit of 2, compliant with the restricted Pod Security level."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"concurrency-injector-selftest-{uuid.uuid4().hex[:8]}",
            "labels": {"app.kubernetes.io/name": "concurrency-injector-selftest"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "command": ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"],
                    "resources": {
                        "requests": {"cpu": CPU, "memory": "64Mi"},
                        "limits": {"cpu": CPU, "memory": "64Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def judge(
    pod: Obj,
    warnings: list[str],
    *,
    namespace: str,
    labelled: bool | None,
    webhook_config: str | None,
) -> Outcome:
    """Whether the pod the API server returned was patched; if not, the likely causes."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    env = {e.get("name"): e for e in containers[0].get("env") or []}
    if keys.STATUS in annotations and keys.WEB_CONCURRENCY in env:
        got = env[keys.WEB_CONCURRENCY].get("value")
        return Outcome(
            True,
            f"passed: the webhook patched a dry-run pod in {namespace} "
            f"(limits.cpu {CPU}: {keys.WEB_CONCURRENCY}={got})",
            warnings,
        )
    if any(w.startswith("audit: would set") for w in warnings):
        message = f"passed: the webhook reviewed a dry-run pod in {namespace} (audit mode)"
        return Outcome(True, message, warnings)
    if FAIL_OPEN_WARNING in warnings:
        message = (
            "failed: the webhook was reached but failed internally and admitted the pod "
            "unpatched; see its log and concurrency_injector_errors_total"
        )
        return Outcome(False, message, warnings)
    message = unreached(namespace, labelled=labelled, webhook_config=webhook_config)
    return Outcome(False, message, warnings)


def unreached(namespace: str, *, labelled: bool | None, webhook_config: str | None) -> str:
    """The message for a pod that came back with no trace of the webhook."""
    config = "the webhook's MutatingWebhookConfiguration"
    if webhook_config:
        config = f"MutatingWebhookConfiguration {webhook_config}"
    causes = []
    if labelled is False:
        causes.append(f"namespace {namespace} is not labelled {keys.ENABLED_LABEL}=true")
    causes += [
        "a NetworkPolicy does not admit the API server to the webhook pods (on the host "
        "network it needs networkPolicy.apiServerCidrs)",
        f"the caBundle in {config} does not match the serving certificate",
        "the webhook Service has no ready endpoints (pods not ready, a wrong selector or port)",
    ]
    if labelled is None:
        causes.append(f"namespace {namespace} is not labelled {keys.ENABLED_LABEL}=true")
    listed = "\n".join(f"  - {c}" for c in causes)
    return (
        f"failed: a dry-run pod with limits.cpu {CPU} in namespace {namespace} came back "
        "unpatched: the API server did not get an answer from the webhook, and "
        "failurePolicy Ignore admitted the pod as if nothing was wrong. Likely causes:\n"
        f"{listed}\n"
        "The API server's metric apiserver_admission_webhook_fail_open_count and its log "
        "('failed calling webhook') name the error."
    )


def warnings_of(headers: Any) -> list[str]:
    """The admission warnings of an API response (`Warning: 299 - "text"` headers)."""
    values = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    found = []
    for value in values:
        m = WARNING.match(value)
        if m:
            found.append(m.group(1).replace('\\"', '"').replace("\\\\", "\\"))
    return found


def dry_run(api: Any, namespace: str, pod: Obj, *, timeout: float) -> tuple[Obj, list[str]]:
    """Create `pod` as a server-side dry run; the pod returned and the warnings."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api)
    start = time.monotonic()
    while True:
        try:
            response = core.create_namespaced_pod(
                namespace, pod, dry_run="All", _preload_content=False, _request_timeout=30
            )
        except ApiException as exc:
            body, waited = str(exc.body or "").lower(), time.monotonic() - start
            # A RoleBinding made just before (the hook's) reaches the authorizer moments later.
            rbac = exc.status == HTTP_FORBIDDEN and waited < min(timeout, RBAC_SETTLE)
            if (rbac or any(w in body for w in RETRY_WHEN)) and waited < timeout:
                time.sleep(1)
                continue
            raise
        return json.loads(response.data), warnings_of(response.headers)


def namespace_labelled(api: Any, namespace: str) -> bool | None:
    """Whether the namespace carries the opt-in label; None when not allowed to read it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api)
    try:
        ns = core.read_namespace(namespace, _request_timeout=30)
    except ApiException:  # not allowed (the chart's hook is not), or gone: not known
        return None
    return bool((ns.metadata.labels or {}).get(keys.ENABLED_LABEL) == "true")


def run(
    args: argparse.Namespace, *, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr
) -> int:
    """Run the self-test; the exit code (see the module docstring)."""
    from kubernetes.client.exceptions import ApiException

    from webhook.kube import api_client

    kubeconfig = args.kubeconfig
    if kubeconfig is None and "KUBERNETES_SERVICE_HOST" not in os.environ:
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        api = api_client(kubeconfig)
        pod, warnings = dry_run(api, args.namespace, probe_pod(args.image), timeout=args.timeout)
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        labelled = True if keys.STATUS in annotations else namespace_labelled(api, args.namespace)
    except ApiException as exc:
        print(f"selftest: {_api_error(exc, args.namespace)}", file=stderr)
        return EXIT_ENVIRONMENT
    except Exception as exc:  # no cluster, no credentials, no route: the environment's fault
        print(f"selftest: cannot ask the API server: {exc}", file=stderr)
        return EXIT_ENVIRONMENT
    outcome = judge(
        pod,
        warnings,
        namespace=args.namespace,
        labelled=labelled,
        webhook_config=args.webhook_config,
    )
    out = stdout if outcome.passed else stderr
    for w in outcome.warnings:
        print(f"selftest: warning from the API server: {w}", file=out)
    print(f"selftest: {outcome.message}", file=out)
    # A pod that comes back unpatched is the cluster's wiring (the SPEC's "environment", 3),
    # as is an API server that cannot be asked; the message says which.
    return EXIT_OK if outcome.passed else EXIT_ENVIRONMENT


def _api_error(exc: Any, namespace: str) -> str:
    """What the API server refused, with its own message (RBAC, Pod Security, a policy engine)."""
    try:
        said = str(json.loads(exc.body).get("message") or "")
    except (TypeError, ValueError, AttributeError):
        said = str(exc.body or "")
    said = said[:300]
    if exc.status == HTTP_FORBIDDEN and "cannot create resource" in said:
        return (
            f"not allowed to create pods (dry run) in namespace {namespace}: the self-test's "
            f"ServiceAccount needs a Role with `create` on pods there ({said})"
        )
    if exc.status == HTTP_NOT_FOUND:
        return f"namespace {namespace} does not exist ({said})"
    return f"the API server refused the dry run: {exc.status} {exc.reason}: {said}"

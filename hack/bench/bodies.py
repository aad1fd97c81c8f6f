"""Pod CREATE AdmissionReviews shaped like the ones kube-apiserver sends a mutating webhook.

A Deployment's ReplicaSet controller creates the pod, so the review carries what the API server
has filled in by then: a defaulted spec (dnsPolicy, restartPolicy, schedulerName, probes'
defaults, the not-ready/unreachable tolerations), the projected service-account token volume and
its mount in every container, `managedFields`, the owner reference to the ReplicaSet, a
`generateName` with no name yet, and the controller's userInfo in the request.

Four bodies: a target pod (a container runs gunicorn, so the webhook patches it) and a
non-target pod (redis and friends: no patch), each with 1 container (about 4 KB) and with 10
containers (about 16 KB). `python hack/bench/bodies.py` prints their sizes.
"""

from __future__ import annotations

import json
from typing import Any

Obj = dict[str, Any]

NAMESPACE = "shop"
APP = "storefront"
TOKEN_VOLUME = "kube-api-access-7x2kq"
POD_TEMPLATE_HASH = "6d9f8c7b5d"
REPLICASET_UID = "5f0c2a8e-3b1d-4c6e-9a7f-2d8e1b4c6a90"
# Helm charts stamp pod templates with a checksum of their config; runs of "distinct" pods
# (post.lua) rewrite its first 8 hex digits per request, so no two pods are alike.
CHECKSUM_ANNOTATION = "checksum/config"
CHECKSUM = "3f6c1e9ab27d40c58e1f6a2b9d7c3e05f4a8b1c6d2e9f7a03b5c8d1e6f2a9b47"

# (name, image, command, args, cpu limit, memory limit, port); a command that runs gunicorn or
# uvicorn makes a container a target.
Container = tuple[str, str, list[str], list[str], str, str, int]

TARGETS: list[Container] = [
    ("web", "registry.example.com/shop/storefront:2.14.1", ["gunicorn"],
     ["storefront.wsgi:application", "--bind", "0.0.0.0:8000", "--timeout", "30",
      "--access-logfile", "-"], "2", "1Gi", 8000),
    ("api", "registry.example.com/shop/storefront-api:2.14.1", ["uvicorn"],
     ["storefront.asgi:app", "--host", "0.0.0.0", "--port", "8001", "--proxy-headers"],
     "1500m", "768Mi", 8001),
    ("admin", "registry.example.com/shop/storefront:2.14.1", ["python3", "-m", "gunicorn"],
     ["storefront.admin:application", "--bind", "0.0.0.0:8002"], "500m", "512Mi", 8002),
]
NON_TARGETS: list[Container] = [
    ("redis", "docker.io/library/redis:7.2.4", ["redis-server"],
     ["/etc/redis/redis.conf", "--maxmemory", "200mb"], "500m", "256Mi", 6379),
    ("envoy", "docker.io/envoyproxy/envoy:v1.29.1", ["envoy"],
     ["-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"], "1", "256Mi", 9901),
    ("fluent-bit", "cr.fluentbit.io/fluent/fluent-bit:2.2.2", ["/fluent-bit/bin/fluent-bit"],
     ["-c", "/fluent-bit/etc/fluent-bit.conf"], "200m", "128Mi", 2020),
    ("statsd-exporter", "docker.io/prom/statsd-exporter:v0.26.0", ["/bin/statsd_exporter"],
     ["--statsd.mapping-config=/etc/statsd/mapping.yaml"], "100m", "64Mi", 9102),
    # Not celery: Celery workers are a runtime profile of their own now (a target).
    ("memcached", "docker.io/library/memcached:1.6.23", ["memcached"],
     ["-m", "512", "-c", "1024", "--threads", "4"], "1", "1Gi", 11211),
    ("nginx", "docker.io/library/nginx:1.25.4", ["nginx"], ["-g", "daemon off;"], "250m",
     "128Mi", 8080),
    ("pgbouncer", "docker.io/bitnami/pgbouncer:1.22.0", ["/opt/bitnami/scripts/pgbouncer/run.sh"],
     [], "250m", "64Mi", 6432),
    ("oauth2-proxy", "quay.io/oauth2-proxy/oauth2-proxy:v7.6.0", ["/bin/oauth2-proxy"],
     ["--config=/etc/oauth2-proxy/oauth2-proxy.cfg"], "100m", "64Mi", 4180),
    ("cloud-sql-proxy", "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.9.0",
     ["/cloud-sql-proxy"], ["--port=5432", "shop-prod:europe-west1:shop"], "250m", "128Mi", 5432),
    ("node-exporter", "quay.io/prometheus/node-exporter:v1.7.0", ["/bin/node_exporter"],
     ["--web.listen-address=:9100"], "100m", "64Mi", 9100),
]

APP_ENV = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability.svc:4317")]


def _probe(port: int, path: str) -> Obj:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
    }


def _container(spec: Container) -> Obj:
    name, image, command, args, cpu, memory, port = spec
    return {
        "name": name,
        "image": image,
        "command": command,
        "args": args,
        "ports": [{"name": "http" if port < 9000 else "metrics", "containerPort": port,
                   "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in APP_ENV],
        "resources": {"limits": {"cpu": cpu, "memory": memory},
                      "requests": {"cpu": cpu, "memory": memory}},
        "volumeMounts": [{"name": TOKEN_VOLUME, "readOnly": True,
                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "livenessProbe": _probe(port, "/healthz"),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _managed_container(container: Obj) -> Obj:
    """The fieldsV1 entry that the controller's server-side apply bookkeeping records."""
    fields: Obj = {".": {}, **{f"f:{key}": {} for key in container if key != "name"}}
    fields["f:name"] = {}
    fields["f:env"] = {".": {}, **{
        f'k:{{"name":"{env["name"]}"}}': {".": {}, "f:name": {}, "f:value": {}}
        for env in container["env"]}}
    fields["f:ports"] = {".": {}, **{
        f'k:{{"containerPort":{p["containerPort"]},"protocol":"TCP"}}':
            {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}
        for p in container["ports"]}}
    fields["f:resources"] = {"f:limits": {".": {}, "f:cpu": {}, "f:memory": {}},
                             "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}}
    return fields


def pod(containers: list[Container]) -> Obj:
    """A pod as the ReplicaSet controller creates it, after the API server's defaulting."""
    spec_containers = [_container(c) for c in containers]
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": f"{APP}-prod",
              "app.kubernetes.io/component": "web", "pod-template-hash": POD_TEMPLATE_HASH}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": f"{APP}-{POD_TEMPLATE_HASH}-",
            "namespace": NAMESPACE,
            "creationTimestamp": None,
            "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9102",
                            CHECKSUM_ANNOTATION: CHECKSUM},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": f"{APP}-{POD_TEMPLATE_HASH}", "uid": REPLICASET_UID,
                "controller": True, "blockOwnerDeletion": True,
            }],
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2024-03-11T09:12:45Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {".": {}, **{f"f:{k}": {} for k in (
                            "prometheus.io/scrape", "prometheus.io/port",
                            CHECKSUM_ANNOTATION)}},
                        "f:generateName": {},
                        "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}},
                        "f:ownerReferences": {".": {}, f'k:{{"uid":"{REPLICASET_UID}"}}': {}},
                    },
                    "f:spec": {
                        "f:containers": {f'k:{{"name":"{c["name"]}"}}': _managed_container(c)
                                         for c in spec_containers},
                        "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {},
                        "f:schedulerName": {}, "f:securityContext": {},
                        "f:terminationGracePeriodSeconds": {},
                    },
                },
            }],
        },
        "spec": {
            "volumes": [{
                "name": TOKEN_VOLUME,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                    "defaultMode": 420,
                },
            }],
            "containers": spec_containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Guaranteed"},
    }


def review(containers: list[Container], *, uid: str) -> Obj:
    """A v1 AdmissionReview for the CREATE of `pod(containers)` by the ReplicaSet controller."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0b6f2a41-8d7c-4f3e-a5b2-9c1d7e6f4a38",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"],
            },
            "object": pod(containers),
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def all_bodies() -> dict[str, Obj]:
    """The four bench bodies by name: {target,nontarget}-{4k,16k}."""
    return {
        "target-4k": review(TARGETS[:1], uid="6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c11"),
        "nontarget-4k": review(NON_TARGETS[:1], uid="6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c12"),
        "target-16k": review(TARGETS + NON_TARGETS[:7], uid="6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c13"),
        "nontarget-16k": review(NON_TARGETS, uid="6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c14"),
    }


# Images in the bench's local registry (driver.py pushes the first; the second is never there):
# a pod without `command` runs its image's CMD, which only the registry can tell.
HIT_IMAGE = "shop/storefront:2.14.1"
HIT_CMD = ["gunicorn", "storefront.wsgi:application", "--bind", "0.0.0.0:8000"]
MISS_IMAGE = "shop/storefront-missing:2.14.1"


def registry_bodies(host: str) -> dict[str, Obj]:
    """The target pod without `command`, its image in the registry at `host` (a cached hit:
    the image's CMD runs gunicorn) or missing from it (a cached failure: no target)."""
    found = {}
    for name, image, uid in (("nocmd-hit-4k", HIT_IMAGE, "6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c15"),
                             ("nocmd-miss-4k", MISS_IMAGE, "6c1f9a2e-4b7d-4e1a-8f3c-0d5b2a9e7c16")):
        body = review(TARGETS[:1], uid=uid)
        container = body["request"]["object"]["spec"]["containers"][0]
        del container["command"]
        container["args"] = []
        container["image"] = f"{host}/{image}"
        found[name] = body
    return found


def is_target(name: str) -> bool:
    return name.startswith("target-")


def encode(body: Obj) -> bytes:
    """Compact JSON, as the API server sends it."""
    return json.dumps(body, separators=(",", ":")).encode()


def main() -> None:
    for name, body in all_bodies().items():
        print(f"{name:14} {len(encode(body)):6d} bytes, "
              f"{len(body['request']['object']['spec']['containers'])} container(s)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The kind suite: the webhook's image in a real cluster with kubelets (tests/e2e). Needs root or
# a Docker engine, Go (kind and, offline, the node image are built here) and Python; helm and
# kubectl come from hack/install-tools.sh.
#
#   hack/e2e-kind.sh                         # Kubernetes 1.37, the whole suite, cluster deleted after
#   hack/e2e-kind.sh --k8s 1.35              # another minor (see node_image below)
#   hack/e2e-kind.sh --keep -- -k drain      # keep the cluster; arguments after -- go to pytest
#   hack/e2e-kind.sh --local                 # build every image here even if a registry answers
#   hack/e2e-kind.sh helm-args               # print the helm arguments the suite installs with
#
# Where a registry answers (a laptop, GitHub Actions) the pinned kindest/node image, the official
# python base and registry:3 are pulled. Where none does, each is built here instead: the node
# image by hack/kind/node-image.sh (Kubernetes from hack/kube, everything else from Debian's
# packages and Go modules), the python base and a registry (Debian's docker-registry) by
# hack/kind/base-images.sh; the pod network is then bridge + host-local per node with routes
# between the nodes (kindnetd is not built here). Workarounds for this host (a capability missing
# from its bounding set, cgroup v1) are applied only where detected.
#
# Steps: a Docker engine (hack/kind/engine.sh); a registry container on the kind network
# (containerd certs.d/hosts.toml on every node, the local-registry-hosting ConfigMap); a 3-node
# kind cluster; the webhook image and a labelled test image built and pushed there; the chart
# installed from the local image in self-managed TLS mode; pytest -m e2e; on failure the
# webhook's logs, events and webhook configuration; the cluster deleted (unless --keep).
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

CLUSTER="${KIND_CLUSTER_NAME:-concurrency-injector-e2e}"
REGISTRY_NAME="kind-registry"
REGISTRY_PORT="${KIND_REGISTRY_PORT:-5001}"
RELEASE="concurrency-injector"
NAMESPACE="concurrency-injector"
TAG="e2e"
# The webhook image as the kubelet pulls it (localhost:5001 maps to the registry on every node).
IMAGE_REPOSITORY="localhost:$REGISTRY_PORT/concurrency-injector"
# The labelled test image, under the name both the kubelet and the webhook's registry client
# resolve on the kind network.
APP_IMAGE_PUSH="localhost:$REGISTRY_PORT/concurrency-injector-e2e-app:$TAG"
APP_IMAGE="$REGISTRY_NAME:5000/concurrency-injector-e2e-app:$TAG"
# kind v0.33.0's node images, by digest, and the version hack/kube builds for each minor.
node_image() {
    case "$1" in
        1.34) echo "kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d" ;;
        1.35) echo "kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0" ;;
        1.36) echo "kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed" ;;
        1.37) echo "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5" ;;
        *) echo "e2e-kind: no node image for Kubernetes $1 (1.34, 1.35, 1.36, 1.37)" >&2; return 1 ;;
    esac
}
local_version() {
    hack/kube/control-plane.sh versions | grep "^$1\." | tail -1 | grep . \
        || { echo "e2e-kind: no pinned Kubernetes $1.x module in hack/kube/modules" >&2; return 1; }
}

# The kind network's IPv4 subnets: kube-apiserver runs on the control-plane node's network, so
# its calls to the webhook come from a node address, which the chart's NetworkPolicy must let in.
# Found after the cluster exists; hack/lint.sh renders with Docker's usual default.
NODE_CIDRS="${KIND_NODE_CIDRS:-172.18.0.0/16}"

# The helm arguments of the install, one a line; hack/lint.sh renders the chart with them.
helm_args() {
    printf '%s\n' --namespace "$NAMESPACE" \
        -f hack/kind/values.yaml \
        --set "image.repository=$IMAGE_REPOSITORY" \
        --set "image.tag=$TAG" \
        --set "networkPolicy.apiServerCidrs={$NODE_CIDRS}"
}

if [ "${1:-}" = helm-args ]; then
    helm_args
    exit 0
fi

K8S="1.37"
KEEP=false
LOCAL=auto
while [ "$#" -gt 0 ]; do
    case "$1" in
        --k8s) K8S="$2"; shift 2 ;;
        --keep) KEEP=true; shift ;;
        --local) LOCAL=true; shift ;;
        --) shift; break ;;
        *) echo "usage: hack/e2e-kind.sh [--k8s 1.34|1.35|1.36|1.37] [--keep] [--local] [-- pytest args]" >&2; exit 2 ;;
    esac
done
NODE_IMAGE="$(node_image "$K8S")"
started="$(date +%s)"
step() { echo "--- [$(($(date +%s) - started)) s] $*"; }

step "Docker engine"
hack/kind/engine.sh
if ! command -v kind >/dev/null 2>&1; then
    step "building kind (hack/kind/tools.sh)"
    PATH="$(hack/kind/tools.sh | tail -1)/kind-$(hack/kind/tools.sh versions | awk '$1 == "kind" {print $2}'):$PATH"
fi

# Where no registry answers, everything is built here. `docker pull` fails at once without a
# network; the time limit covers one that hangs.
if [ "$LOCAL" = auto ]; then
    LOCAL=true
    if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || timeout 300 docker pull "$NODE_IMAGE" >/dev/null 2>&1; then
        LOCAL=false
    fi
fi
BUILD_ARGS=()
if [ "$LOCAL" = true ]; then
    VERSION="$(local_version "$K8S")"
    step "no registry answers: building the node image for Kubernetes $VERSION here"
    NODE_IMAGE="$(hack/kind/node-image.sh "$VERSION")"
    PYTHON_BASE="$(hack/kind/base-images.sh python)"
    REGISTRY_IMAGE="$(hack/kind/base-images.sh net)"
    # Debian's default configuration asks for htpasswd credentials; this one is registry:3's
    # (no auth, filesystem storage), written where the container starts.
    REGISTRY_CMD=(sh -c 'printf "%s\n" "version: 0.1" "storage:" "  filesystem:" \
        "    rootdirectory: /var/lib/docker-registry" "http:" "  addr: :5000" >/tmp/config.yml \
        && exec docker-registry serve /tmp/config.yml')
    BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$PYTHON_BASE")
    ETCD_TAG="$(docker image inspect -f '{{index .Config.Labels "io.concurrency-injector.etcd-tag"}}' "$NODE_IMAGE")"
else
    REGISTRY_IMAGE="registry:3"
    REGISTRY_CMD=()
fi

TOOLS="$(hack/install-tools.sh)"
PATH="$TOOLS:$PATH"
export PATH
STATE="$(mktemp -d)"
KUBECONFIG="$STATE/kubeconfig"
export KUBECONFIG

dump() {
    echo "--- webhook pods, logs, events and webhook configuration (the suite failed)"
    kubectl get nodes,pods -A -o wide || true
    kubectl get endpointslices,pdb -n "$NAMESPACE" -o wide || true
    kubectl logs -n "$NAMESPACE" -l "app.kubernetes.io/instance=$RELEASE" --all-containers \
        --prefix --tail=300 || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -100 || true
    kubectl get mutatingwebhookconfigurations -o yaml || true
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ "$KEEP" = true ]; then
        echo "--- kept: kind cluster $CLUSTER (KUBECONFIG=$KUBECONFIG), registry $REGISTRY_NAME"
        return
    fi
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$STATE"
}
trap cleanup EXIT

step "local registry $REGISTRY_NAME ($REGISTRY_IMAGE) on 127.0.0.1:$REGISTRY_PORT"
if [ "$(docker inspect -f '{{.Config.Image}}' "$REGISTRY_NAME" 2>/dev/null || true)" != "$REGISTRY_IMAGE" ]; then
    docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
fi
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != true ]; then
    docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
    docker run -d --restart=always -p "127.0.0.1:$REGISTRY_PORT:5000" --network bridge \
        --name "$REGISTRY_NAME" "$REGISTRY_IMAGE" "${REGISTRY_CMD[@]}" >/dev/null
fi

step "kind cluster $CLUSTER ($NODE_IMAGE)"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
hack/kind/cluster-config.sh "$LOCAL" "${ETCD_TAG:-}" >"$STATE/cluster.yaml"
wait_flag=(--wait 120s)
# Without kindnetd, nodes are Ready only once the pod network below exists.
[ "$LOCAL" = true ] && wait_flag=()
kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$STATE/cluster.yaml" \
    --kubeconfig "$KUBECONFIG" "${wait_flag[@]}"
if [ "$LOCAL" = true ]; then
    step "pod network: bridge + host-local on each node, routes between nodes"
    hack/kind/pod-network.sh "$CLUSTER"
    step "NetworkPolicy: kube-router's firewall (hack/kind/network-policy.yaml)"
    policy_image="$(docker image inspect -f '{{index .Config.Labels "io.concurrency-injector.network-policy-image"}}' "$NODE_IMAGE")"
    sed "s|image: IMAGE|image: $policy_image|" hack/kind/network-policy.yaml | kubectl apply -f - >/dev/null
fi
kubectl wait --for=condition=Ready nodes --all --timeout=180s
[ "$LOCAL" = true ] && kubectl rollout status -n kube-system daemonset/kube-router --timeout=180s

# Every node resolves both names of the registry to it: localhost:PORT (the webhook image, as
# kind documents) and kind-registry:5000 (the test image, a name the webhook's pods resolve too).
for node in $(kind get nodes --name "$CLUSTER"); do
    for host in "localhost:$REGISTRY_PORT" "$REGISTRY_NAME:5000"; do
        docker exec "$node" mkdir -p "/etc/containerd/certs.d/$host"
        printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" \
            | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/$host/hosts.toml"
    done
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = null ]; then
    docker network connect kind "$REGISTRY_NAME"
fi
kubectl apply -f - <<EOF2
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:$REGISTRY_PORT"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
EOF2

NODE_CIDRS="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' \
    | tr ' ' '\n' | grep '\.' | paste -sd, -)"
echo "--- the kind network: $NODE_CIDRS (the NetworkPolicy's apiServerCidrs)"

step "images (the webhook from ./Dockerfile, the test app from hack/kind/app)"
# The classic builder: it needs no buildx plugin, which Debian's docker.io lacks.
build() {
    DOCKER_BUILDKIT=0 docker build -q "${BUILD_ARGS[@]}" "$@" >/dev/null 2>"$STATE/build.log" \
        || { cat "$STATE/build.log"; echo "e2e-kind: docker build $* failed" >&2; exit 1; }
}
build -t "$IMAGE_REPOSITORY:$TAG" .
build -t "$APP_IMAGE_PUSH" hack/kind/app
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep ":$TAG " || true
APP_IMAGE_IN_REGISTRY=true
if ! docker push -q "$IMAGE_REPOSITORY:$TAG"; then
    echo "push failed: loading the webhook image into the nodes instead"
    kind load docker-image --name "$CLUSTER" "$IMAGE_REPOSITORY:$TAG"
fi
if ! docker push -q "$APP_IMAGE_PUSH"; then
    # Without the registry the image label cannot be read: that scenario skips and says so.
    echo "push failed: loading the test image into the nodes instead"
    docker tag "$APP_IMAGE_PUSH" "$APP_IMAGE"
    kind load docker-image --name "$CLUSTER" "$APP_IMAGE"
    APP_IMAGE_IN_REGISTRY=false
fi

step "helm install $RELEASE (self-managed TLS)"
mapfile -t args < <(helm_args)
helm install "$RELEASE" charts/concurrency-injector --create-namespace "${args[@]}" \
    --wait --timeout 5m
kubectl rollout status -n "$NAMESPACE" "deployment/$RELEASE" --timeout=180s

step "helm test $RELEASE (the API server reaches the webhook: a dry-run pod comes back patched)"
helm test "$RELEASE" -n "$NAMESPACE" --logs --timeout 3m

step "pytest -m e2e (Kubernetes $K8S, node image $NODE_IMAGE)"
status=0
E2E_KUBECONFIG="$KUBECONFIG" \
    E2E_RELEASE="$RELEASE" \
    E2E_NAMESPACE="$NAMESPACE" \
    E2E_APP_IMAGE="$APP_IMAGE" \
    E2E_APP_IMAGE_IN_REGISTRY="$APP_IMAGE_IN_REGISTRY" \
    E2E_VALUES="$ROOT/hack/kind/values.yaml" \
    E2E_KUBE_MINOR="$K8S" \
    E2E_CLUSTER="$CLUSTER" \
    "$PYTHON" -m pytest tests/e2e -m e2e -p no:cacheprovider -o addopts= -rs "$@" || status=$?
if [ "$status" -ne 0 ]; then
    dump
fi
step "done (pytest status $status)"
exit "$status"

#!/usr/bin/env bash
# A kind node image for Kubernetes VERSION, built on a machine that reaches no container
# registry: what `kind build node-image` makes, done by hand, since that command fetches etcd,
# coredns, pause and kindnetd from their registries. Prints the image's tag.
#
#   hack/kind/node-image.sh 1.37.2
#
# Parts: kind's base image (hack/kind/base-images.sh node: Debian, systemd, containerd, runc,
# crictl, CNI plugins), kubeadm/kubelet/kubectl and the control plane images from
# hack/kube/control-plane.sh build, etcd, coredns, pause and kube-router (NetworkPolicy) from
# hack/kind/tools.sh, each
# component image tagged with the name kubeadm VERSION asks for and imported into the node's
# containerd, pinned, as kind does. The cluster then needs no pull at all. Keyed by everything
# that went in, so the second run prints the tag in seconds.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION="${1:?usage: hack/kind/node-image.sh VERSION}"
KUBE_CACHE="${KUBE_CACHE:-$HOME/.cache/concurrency-injector/kube}"
REPO="concurrency-injector.local"

cannot() { echo "node-image: $*" >&2; exit 3; }
log() { echo "node-image: $*" >&2; }

started="$(date +%s)"
"$ROOT/hack/kube/control-plane.sh" build "$VERSION" >&2 || cannot "Kubernetes $VERSION did not build"
KBIN="$KUBE_CACHE/$VERSION/bin"
for b in kubeadm kubelet kubectl kube-proxy kube-scheduler; do
    [ -x "$KBIN/$b" ] || cannot "Kubernetes $VERSION was built without $b: its module in hack/kube/modules" \
        "lists only the control plane (regenerate it: hack/kube/control-plane.sh gen $VERSION)"
done
TOOLS="$("$HERE/tools.sh" | tail -1)"
tool_dir() { echo "$TOOLS/$1-$("$HERE/tools.sh" versions | awk -v n="$1" '$1 == n {print $2}')"; }
BASE="$("$HERE/base-images.sh" node)"
NET="$("$HERE/base-images.sh" net)"

KEY="$({
    cat "$0"
    echo "$BASE $NET"
    "$HERE/tools.sh" versions
    # size and mtime of each Kubernetes binary: a rebuild makes a new image.
    find -L "$KBIN" -maxdepth 1 -type f -printf '%f %s %T@\n' | sort
} | sha256sum | cut -c1-12)"
IMAGE="$REPO/kind-node:v$VERSION-$KEY"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

# --- the component images, under the names kubeadm asks for --------------------------------------
WORK="$(mktemp -d)"
BUILD=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    [ -z "$BUILD" ] || docker rm -f -v "$BUILD" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mapfile -t WANTED < <("$KBIN/kubeadm" config images list --kubernetes-version "v$VERSION" 2>/dev/null)
[ "${#WANTED[@]}" -gt 0 ] || cannot "kubeadm $VERSION listed no images"
SANDBOX="$(sed -n 's/^ *sandbox_image *= *"\(.*\)"/\1/p' \
    "$(go mod download -json "sigs.k8s.io/kind@$("$HERE/tools.sh" versions | awk '$1 == "kind" {print $2}')" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/images/base/files/etc/containerd/config.toml")"
[ -n "$SANDBOX" ] || cannot "no sandbox_image in kind's containerd config"

# image TAG BINARY [FROM]: BINARY at /usr/local/bin (and / for coredns and pause, whose images
# are entrypoint-only), FROM scratch unless FROM is given.
image() {
    local tag="$1" binary="$2" from="${3:-scratch}" name ctx
    name="$(basename "$tag" | cut -d: -f1)"
    ctx="$WORK/$name"
    mkdir -p "$ctx"
    cp "$binary" "$ctx/$name"
    {
        echo "FROM $from"
        echo "COPY $name /usr/local/bin/$name"
        echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        case "$name" in
        coredns) echo "COPY $name /coredns"; echo 'ENTRYPOINT ["/coredns"]' ;;
        pause) echo "COPY $name /pause"; echo 'ENTRYPOINT ["/pause"]' ;;
        kube-proxy) cat "$HERE/iptables.Dockerfile" ;;
        kube-router)
            cat "$HERE/iptables.Dockerfile"
            echo 'ENTRYPOINT ["/usr/local/bin/kube-router"]' ;;
        esac
    } >"$ctx/Dockerfile"
    cp "$HERE/iptables-wrapper" "$ctx/"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$ctx.log" \
        || { cat "$ctx.log" >&2; cannot "docker build of $tag failed"; }
}

IMAGES=()
ETCD_TAG=""
for tag in "${WANTED[@]}" "$SANDBOX"; do
    case "$tag" in
    */kube-proxy:*) image "$tag" "$KBIN/kube-proxy" "$NET" ;;
    */kube-apiserver:* | */kube-controller-manager:* | */kube-scheduler:*)
        image "$tag" "$KBIN/$(basename "$tag" | cut -d: -f1)" ;;
    */etcd:*)
        # The etcd that hack/kube builds (kubeadm's own pin may be newer): tagged as what it is,
        # and the cluster config points kubeadm at that tag (hack/e2e-kind.sh).
        tag="${tag%:*}:$(readlink -f "$KBIN/etcd" | sed -n 's|.*/etcd-\([0-9.]*\)/bin/.*|\1|p')-0"
        image "$tag" "$KBIN/etcd"
        ETCD_TAG="${tag##*:}" ;;
    */coredns:*) image "$tag" "$(tool_dir coredns)/coredns" ;;
    */pause:*) image "$tag" "$(tool_dir pause)/pause" ;;
    *) cannot "kubeadm asks for $tag, which is not built here" ;;
    esac
    IMAGES+=("$tag")
done
# NetworkPolicy where kindnetd is not there (hack/kind/network-policy.yaml).
NETWORK_POLICY_IMAGE="$REPO/kube-router:$("$HERE/tools.sh" versions | awk '$1 == "kube-router" {print $2}')"
image "$NETWORK_POLICY_IMAGE" "$(tool_dir kube-router)/kube-router" "$NET"
IMAGES+=("$NETWORK_POLICY_IMAGE")
log "component images: ${IMAGES[*]}"

# --- the node: kind's buildImage steps (pkg/build/nodeimage/buildcontext.go) --------------------
BUILD="$(docker run -d --entrypoint sleep "$BASE" infinity)"
for b in kubeadm kubelet kubectl; do
    docker cp "$KBIN/$b" "$BUILD:/usr/bin/$b"
done
docker exec "$BUILD" chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl
docker exec "$BUILD" sh -c "echo v$VERSION > /kind/version && mkdir -p /kind/manifests"
docker exec -d "$BUILD" containerd
for _ in $(seq 1 60); do
    docker exec "$BUILD" ctr version >/dev/null 2>&1 && break
    sleep 0.5
done
docker save "${IMAGES[@]}" | docker exec -i "$BUILD" ctr -n k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null \
    || cannot "importing the component images into the node's containerd failed"
docker exec "$BUILD" sh -c 'kill $(pidof containerd) && while pidof containerd >/dev/null; do sleep 0.2; done'
docker commit \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' \
    --change "LABEL io.concurrency-injector.etcd-tag=$ETCD_TAG" \
    --change "LABEL io.concurrency-injector.network-policy-image=$NETWORK_POLICY_IMAGE" \
    "$BUILD" "$IMAGE" >/dev/null
# Older node images of this version (1.4 GB each) go; one still in use by a node stays.
docker image ls --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO/kind-node:v$VERSION-" \
    | grep -vx "$IMAGE" | xargs -r docker rmi >/dev/null 2>&1 || true
log "$IMAGE in $(($(date +%s) - started)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$IMAGE"

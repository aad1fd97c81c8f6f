#!/usr/bin/env bash
# Builds, from the Go module proxy and Debian's compilers, every program a kind node needs besides
# Kubernetes itself (hack/kube/control-plane.sh builds that), plus kind: nothing is downloaded as
# a release binary. Each tool lands in $TOOLS_CACHE/NAME-VERSION/ and is built once.
#
#   hack/kind/tools.sh            # build what is missing; prints the cache directory
#   hack/kind/tools.sh versions   # NAME VERSION, one a line (what the node image is keyed by)
#
# The versions are the ones kind v0.33.0's base image pins (images/base/Dockerfile), so a node
# built here runs what kind's own node image runs.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS_CACHE="${TOOLS_CACHE:-$HOME/.cache/concurrency-injector/kind-tools}"

KIND_VERSION=v0.33.0
CONTAINERD_VERSION=v2.3.4
RUNC_VERSION=v1.4.3
CRICTL_VERSION=v1.36.0
CNI_PLUGINS_VERSION=v1.9.1
COREDNS_VERSION=v1.14.6
# NetworkPolicy for a pod network without kindnetd: kube-router's firewall alone (iptables, ipset).
KUBE_ROUTER_VERSION=v2.1.0
# The pause program is ours (hack/kind/pause/pause.c): keyed by its content.
PAUSE_VERSION="$(sha256sum "$HERE/pause/pause.c" | cut -c1-12)"

versions() {
    cat <<VERSIONS
kind $KIND_VERSION
containerd $CONTAINERD_VERSION
runc $RUNC_VERSION
crictl $CRICTL_VERSION
cni-plugins $CNI_PLUGINS_VERSION
coredns $COREDNS_VERSION
kube-router $KUBE_ROUTER_VERSION
pause $PAUSE_VERSION
VERSIONS
}

if [ "${1:-}" = versions ]; then
    versions
    exit 0
fi

cannot() { echo "kind-tools: cannot build: $*" >&2; exit 3; }
command -v go >/dev/null 2>&1 || cannot "Go is not installed"

# build NAME VERSION COMMAND...: runs COMMAND with GOBIN set to the tool's directory, once.
build() {
    local name="$1" version="$2" dir started
    shift 2
    dir="$TOOLS_CACHE/$name-$version"
    [ -f "$dir/.done" ] && return 0
    started="$(date +%s)"
    echo "kind-tools: building $name $version" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    GOBIN="$dir" "$@" || cannot "$name $version did not build (see above)"
    touch "$dir/.done"
    echo "kind-tools: $name $version took $(($(date +%s) - started)) s" >&2
}

build_runc() {
    command -v gcc >/dev/null 2>&1 || cannot "runc needs gcc (cgo)"
    if ! pkg-config --exists libseccomp 2>/dev/null; then
        [ "$(id -u)" = 0 ] || cannot "runc needs libseccomp-dev and pkg-config"
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev pkg-config >/dev/null 2>&1 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev pkg-config >/dev/null; }; } \
            || cannot "apt-get install libseccomp-dev pkg-config failed"
    fi
    CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
        -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" \
        "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_pause() {
    command -v gcc >/dev/null 2>&1 || cannot "pause needs gcc"
    gcc -static -Os -Wall -Werror -o "$GOBIN/pause" "$HERE/pause/pause.c"
}

export CGO_ENABLED=0
build kind "$KIND_VERSION" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
build containerd "$CONTAINERD_VERSION" go install -trimpath \
    -tags "no_aufs no_zfs no_btrfs no_devmapper" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
build runc "$RUNC_VERSION" build_runc
build crictl "$CRICTL_VERSION" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
build cni-plugins "$CNI_PLUGINS_VERSION" go install -trimpath -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/ptp@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION"
build coredns "$COREDNS_VERSION" go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
build kube-router "$KUBE_ROUTER_VERSION" go install -trimpath \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
build pause "$PAUSE_VERSION" build_pause
echo "$TOOLS_CACHE"

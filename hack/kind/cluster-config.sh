#!/usr/bin/env bash
# Prints the kind cluster configuration of hack/e2e-kind.sh: hack/kind/cluster.yaml, plus what
# this host or a locally built node image needs, each only where it is detected.
#
#   hack/kind/cluster-config.sh LOCAL [ETCD_TAG]
#
# LOCAL=true: the node image came from hack/kind/node-image.sh: no kindnetd (the pod network is
# hack/kind/pod-network.sh), and kubeadm runs the etcd that image carries (ETCD_TAG).
# cgroup v1 host: kubelet 1.35+ refuses cgroup v1 unless failCgroupV1 is false.
# A capability bounding set without CAP_SYS_RESOURCE: containerd must not raise oom_score_adj
# (every pod sandbox fails otherwise), as kind's entrypoint arranges for rootless hosts.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
LOCAL="${1:?usage: cluster-config.sh LOCAL [ETCD_TAG]}"
ETCD_TAG="${2:-}"

cgroup_v1() { [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; }
no_sys_resource() {
    local bnd
    bnd="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
    [ $((16#$bnd >> 24 & 1)) -eq 0 ]
}

patches=()
if cgroup_v1; then
    patches+=(kubeadm "kind: KubeletConfiguration
failCgroupV1: false")
fi
if [ "$LOCAL" = true ] && [ -n "$ETCD_TAG" ]; then
    patches+=(kubeadm "kind: ClusterConfiguration
etcd:
  local:
    imageTag: \"$ETCD_TAG\"")
fi
if no_sys_resource; then
    patches+=(containerd '[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true')
fi
# The base file with the patches added to its lists (PyYAML: a dependency of the package).
"${PYTHON:-python3}" - "$HERE/cluster.yaml" "$LOCAL" "${patches[@]}" <<'PY'
import sys

import yaml

path, local, *patches = sys.argv[1:]
with open(path) as f:
    config = yaml.safe_load(f)
if local == "true":
    config.setdefault("networking", {})["disableDefaultCNI"] = True
for kind, text in zip(patches[::2], patches[1::2]):
    key = "kubeadmConfigPatches" if kind == "kubeadm" else "containerdConfigPatches"
    config.setdefault(key, []).append(text)
yaml.safe_dump(config, sys.stdout, sort_keys=False)
PY

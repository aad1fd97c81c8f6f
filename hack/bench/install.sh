#!/usr/bin/env bash
# Install what the benchmark needs and the project does not: wrk (Debian); kopf, flask and
# matplotlib (PyPI) for the peers and the plot; py-spy for the profile. Idempotent: skips what
# is already there.
set -eu

if ! command -v wrk >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
fi

missing=""
for mod in kopf flask matplotlib; do
    if ! python -c "import $mod" >/dev/null 2>&1; then
        missing="$missing $mod"
    fi
done
if ! command -v py-spy >/dev/null 2>&1; then
    missing="$missing py-spy"
fi
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086  # one word per package
    python -m pip install $missing
fi

if ! command -v taskset >/dev/null 2>&1; then
    echo "taskset (util-linux) is missing: cannot pin server and load generator" >&2
    exit 1
fi

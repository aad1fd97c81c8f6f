#!/usr/bin/env bash
# The throttle lab: gunicorn and uvicorn in a CPU-quota cgroup, loaded from outside it.
#   hack/throttle-lab/run.sh            # quick: 1 CPU only, 2 s runs, 2 repeats (about 4 minutes)
#   hack/throttle-lab/run.sh --full     # 0.5, 1 and 2 CPUs, 5 s runs, 2 repeats; writes results/
#   hack/throttle-lab/run.sh --check    # can a CPU-quota cgroup be made here? (exit 3 if not)
# Needs root (it creates cgroups). Installs gunicorn, uvicorn and matplotlib if missing.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python3}"

missing=""
for mod in gunicorn uvicorn matplotlib; do
    "$PYTHON" -c "import $mod" >/dev/null 2>&1 || missing="$missing $mod"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086  # one word per package
    "$PYTHON" -m pip install --quiet --disable-pip-version-check $missing
fi

cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" "$here/lab.py" "$@"

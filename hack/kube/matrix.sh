#!/usr/bin/env bash
# Runs the API server suite (pytest -m apiserver) on every Kubernetes version pinned in
# hack/kube/modules, one after the other (each builds once, then is cached), and prints a table.
#
#   hack/kube/matrix.sh                 # all versions
#   hack/kube/matrix.sh 1.35.4 1.37.2   # some
#   extra pytest arguments: PYTEST_ARGS="-k tls" hack/kube/matrix.sh
set -eu -o pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
SCRIPT="hack/kube/control-plane.sh"
OUT="${MATRIX_OUT:-$(mktemp -d)}"

main() {
    local versions failed version started result summary took
    if [ "$#" -gt 0 ]; then versions="$*"; else versions="$("$SCRIPT" versions | xargs)"; fi
    failed=0
    for version in $versions; do
        echo "--- Kubernetes $version"
        started="$(date +%s)"
        # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
        if KUBE_VERSION="$version" KUBE_REPORT="$OUT/$version.json" \
            CONCURRENCY_INJECTOR_REQUIRE_APISERVER=1 \
            "$PYTHON" -m pytest -m apiserver -p no:cacheprovider ${PYTEST_ARGS:-} \
            2>&1 | tee "$OUT/$version.log"; then
            result="passed"
        else
            result="FAILED"
            failed=1
        fi
        summary="$(grep -E '^=+ .*(passed|failed|skipped|error).* in [0-9.]+s' "$OUT/$version.log" | tail -1 \
            | sed 's/^=* //; s/ =*$//')"
        echo "$version|$result|$summary|$(($(date +%s) - started)) s" >>"$OUT/table"
    done

    echo
    echo "| Kubernetes | result | pytest | wall time (build included) |"
    echo "|---|---|---|---|"
    while IFS='|' read -r version result summary took; do
        echo "| $version | $result | $summary | $took |"
    done <"$OUT/table"
    echo "(logs and reports in $OUT)"
    return "$failed"
}

# On one line, so the script edited while it runs is never read past this point.
main "$@"; exit $?

#!/usr/bin/env bash
# Builds promtool and hack/promql/metricnames from the pinned Prometheus module (hack/promql/go.mod)
# and fetches the sources that define the metrics the chart's alerts and dashboard name from
# outside the project (kube-apiserver, cAdvisor, kube-state-metrics). Cached outside the work tree,
# keyed by go.sum: a warm call prints and returns at once.
#
#   hack/promql.sh      # prints: bin=DIR, then one NAME=DIR line per metric source
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
MODULE="$HERE/promql"
CACHE="${PROMQL_CACHE:-$HOME/.cache/concurrency-injector/promql}"
# The modules whose source names the outside metrics (see tests/test_monitoring.py).
SOURCES="apiserver=k8s.io/apiserver@v0.37.2 cadvisor=github.com/google/cadvisor@v0.53.0 kube-state-metrics=k8s.io/kube-state-metrics/v2@v2.16.0"

command -v go >/dev/null 2>&1 || { echo "promql: go is not installed" >&2; exit 3; }
key="$(cat "$MODULE/go.mod" "$MODULE/go.sum" "$MODULE"/metricnames/*.go | sha256sum | cut -c1-16)"
bin="$CACHE/$key/bin"
if [ ! -x "$bin/promtool" ] || [ ! -x "$bin/metricnames" ]; then
    echo "promql: building promtool and metricnames (prometheus $(sed -n "s/^require github.com\/prometheus\/prometheus //p" "$MODULE/go.mod"))" >&2
    mkdir -p "$bin.tmp"
    # remove_all_sd: promtool without the service discoveries (cloud SDKs) it never needs here.
    (cd "$MODULE" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath \
        -tags remove_all_sd -ldflags "-s -w" -o "$bin.tmp/" \
        github.com/prometheus/prometheus/cmd/promtool ./metricnames)
    rm -rf "$bin" && mv "$bin.tmp" "$bin"
fi
echo "bin=$bin"
for source in $SOURCES; do
    dir="$(cd "$MODULE" && go mod download -json "${source#*=}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -d "$dir" ] || { echo "promql: could not download ${source#*=}" >&2; exit 3; }
    echo "${source%%=*}=$dir"
done

#!/usr/bin/env bash
# Packages the chart as a release publishes it: its default image becomes the released one, by
# repository and digest, and its version and appVersion the package version. release.yml runs
# it before `helm push`; hack/lint.sh runs it with a made-up digest, so the step is checked here.
#
#   hack/package-chart.sh IMAGE_REPOSITORY DIGEST OUTDIR    # prints the .tgz path
set -eu

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPOSITORY="${1:?usage: package-chart.sh IMAGE_REPOSITORY DIGEST OUTDIR}"
DIGEST="${2:?usage: package-chart.sh IMAGE_REPOSITORY DIGEST OUTDIR}"
OUT="${3:?usage: package-chart.sh IMAGE_REPOSITORY DIGEST OUTDIR}"
PYTHON="${PYTHON:-python3}"
case "$DIGEST" in
    sha256:????????????????????????????????????????????????????????????????) ;;
    *) echo "package-chart: not a sha256 digest: $DIGEST" >&2; exit 2 ;;
esac

VERSION="$("$PYTHON" "$ROOT/hack/check-version.py" --print)"
PATH="$("$ROOT/hack/install-tools.sh"):$PATH"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -R "$ROOT/charts/concurrency-injector" "$WORK/"
values="$WORK/concurrency-injector/values.yaml"
sed -i \
    -e "s|^  repository: concurrency-injector\$|  repository: $REPOSITORY|" \
    -e "s|^  digest: \"\"\$|  digest: \"$DIGEST\"|" \
    "$values"
grep -q "^  repository: $REPOSITORY\$" "$values" \
    || { echo "package-chart: image.repository not found in values.yaml" >&2; exit 1; }
grep -q "^  digest: \"$DIGEST\"\$" "$values" \
    || { echo "package-chart: image.digest not found in values.yaml" >&2; exit 1; }
helm lint --strict "$WORK/concurrency-injector" >&2
# The image the packaged chart installs (the webhook and its helm test pod) is exactly the
# released one.
rendered="$(helm template concurrency-injector "$WORK/concurrency-injector" \
    | sed -n 's/^ *image: "\(.*\)"$/\1/p' | sort -u)"
[ "$rendered" = "$REPOSITORY@$DIGEST" ] \
    || { echo "package-chart: the chart renders image '$rendered'" >&2; exit 1; }
mkdir -p "$OUT"
helm package "$WORK/concurrency-injector" --version "$VERSION" --app-version "$VERSION" \
    --destination "$OUT" >&2
echo "$OUT/concurrency-injector-$VERSION.tgz"

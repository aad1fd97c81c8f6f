#!/usr/bin/env python3
"""Writes the chart's Grafana dashboard (charts/concurrency-injector/dashboards/*.json).

    hack/dashboard.py           # write it
    hack/dashboard.py --check   # exit 1 if the committed file differs from what this writes
    hack/dashboard.py --markdown  # the panels and their queries, as the README lists them

The panels are data here, so a reviewer reads queries rather than Grafana's JSON; the JSON is the
generated artefact the chart ships. tests/test_monitoring.py parses every query with Prometheus'
own parser and checks that each metric it names exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "charts" / "concurrency-injector" / "dashboards" / "concurrency-injector.json"

# The webhook's own series carry the namespace its pods run in (the ServiceMonitor's target
# labels); the workload series (cAdvisor, kube-state-metrics) are filtered by $app_namespace.
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"
# A pod the webhook decided carries its status annotation; kube-state-metrics exports it only when
# started with --metric-annotations-allowlist=pods=[concurrency-injector.io/status].
TARGETED = (
    'max by (namespace, pod) (kube_pod_annotations{annotation_concurrency_injector_io_status!=""})'
)
THROTTLED = (
    "sum by (namespace, pod, container) (rate(container_cpu_cfs_throttled_seconds_total"
    f'{{container!="", container!="POD", namespace=~"$app_namespace"}}[{RATE}]))'
)


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{NS}}}[{RATE}]))"


def _quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{NS}}}[{RATE}])))"


# (title, unit, description, [(legend, expr)]); one row of the layout per tuple in ROWS.
Panel = tuple[str, str, str, list[tuple[str, str]]]
ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Admission",
        [
            (
                "Reviews by outcome",
                "reqps",
                "Admission reviews answered per second, by outcome.",
                [("{{outcome}}", _rate("concurrency_injector_requests_total", "outcome"))],
            ),
            (
                "Review latency",
                "s",
                "Time to answer one review (body read to response), p50 and p99.",
                [
                    ("p50", _quantile(0.5, "concurrency_injector_request_duration_seconds")),
                    ("p99", _quantile(0.99, "concurrency_injector_request_duration_seconds")),
                ],
            ),
            (
                "Containers given a worker count",
                "ops",
                "Containers given their worker variable (or that would be, in audit mode).",
                [
                    (
                        "{{runtime}} from {{source}} ({{mode}})",
                        _rate("concurrency_injector_injections_total", "runtime, source, mode"),
                    )
                ],
            ),
            (
                "Skipped, by reason",
                "ops",
                "Pods or containers left unchanged, by reason.",
                [("{{reason}}", _rate("concurrency_injector_skips_total", "reason"))],
            ),
        ],
    ),
    (
        "Warnings and failures",
        [
            (
                "Warnings returned, by kind",
                "ops",
                "Warnings returned to API clients (kubectl prints them), by kind.",
                [("{{kind}}", _rate("concurrency_injector_warnings_total", "kind"))],
            ),
            (
                "Internal errors, by stage",
                "ops",
                "mutate: a pod admitted unpatched (fail-open); resize: a resize allowed without a "
                "check; registry, configmaps: a lookup failed and the pod was decided without it.",
                [("{{stage}}", _rate("concurrency_injector_errors_total", "stage"))],
            ),
            (
                "API server skipped the webhook",
                "ops",
                "The API server's own count of calls that failed open: timeouts, TLS failures, "
                "no endpoints. Pods were created unpatched.",
                [
                    (
                        "{{name}}",
                        "sum by (name) (rate(apiserver_admission_webhook_fail_open_count"
                        f'{{name=~"$webhook"}}[{RATE}]))',
                    )
                ],
            ),
            (
                "Reviews over a work limit",
                "ops",
                "Reviews admitted unchanged with a warning because they were over a work limit.",
                [("{{limit}}", _rate("concurrency_injector_reviews_over_limit_total", "limit"))],
            ),
        ],
    ),
    (
        "Registry and server",
        [
            (
                "Registry lookups by outcome",
                "ops",
                "Image config lookups per image and admission, by outcome.",
                [("{{outcome}}", _rate("concurrency_injector_registry_lookups_total", "outcome"))],
            ),
            (
                "Registry cache hit ratio",
                "percentunit",
                "Share of image lookups answered from the cache.",
                [
                    (
                        "hit ratio",
                        f"{_rate('concurrency_injector_registry_cache_hits_total')} / "
                        f"({_rate('concurrency_injector_registry_cache_hits_total')} + "
                        f"{_rate('concurrency_injector_registry_lookups_total')})",
                    )
                ],
            ),
            (
                "Registry round trip",
                "s",
                "Registry round trips for one image (manifest, index, config blob), p99.",
                [("p99", _quantile(0.99, "concurrency_injector_registry_lookup_seconds"))],
            ),
            (
                "Connections closed on a bound; certificate reloads",
                "ops",
                "Connections the server closed on a bound, and certificate reloads by result.",
                [
                    (
                        "closed: {{reason}}",
                        _rate("concurrency_injector_connections_closed_total", "reason"),
                    ),
                    (
                        "reload: {{result}}",
                        _rate("concurrency_injector_certificate_reloads_total", "result"),
                    ),
                ],
            ),
        ],
    ),
    (
        "CPU throttling of the workloads",
        [
            (
                "Throttled seconds per second: decided by the webhook vs not",
                "s",
                "CFS throttled time (cAdvisor) summed over containers of pods the webhook decided "
                "(status annotation, via kube-state-metrics) and of the others. Throttled seconds, "
                "not the share of throttled periods, tell a worker count above the limit apart.",
                [
                    (
                        "decided by the webhook",
                        f"sum ({THROTTLED} * on (namespace, pod) group_left () {TARGETED})",
                    ),
                    ("not decided", f"sum ({THROTTLED} unless on (namespace, pod) {TARGETED})"),
                ],
            ),
            (
                "Most throttled containers",
                "s",
                "The ten containers with the most throttled seconds per second.",
                [("{{namespace}}/{{pod}}/{{container}}", f"topk(10, {THROTTLED})")],
            ),
        ],
    ),
]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "current": {"selected": True, "text": "All", "value": "$__all"},
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, ident = 0, 1
    for row_title, row in ROWS:
        panels.append(
            {
                "id": ident,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        ident, y = ident + 1, y + 1
        width = 24 // len(row)
        for i, (title, unit, description, targets) in enumerate(row):
            panels.append(
                {
                    "id": ident,
                    "type": "timeseries",
                    "title": title,
                    "description": description,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
                        for n, (legend, expr) in enumerate(targets)
                    ],
                }
            )
            ident += 1
        y += 8
    return {
        "title": "concurrency-injector",
        "uid": "concurrency-injector",
        "description": "Admission reviews, warnings, registry lookups and the CPU throttling of "
        "the workloads concurrency-injector decides.",
        "tags": ["concurrency-injector", "kubernetes"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable(
                    "namespace",
                    "Webhook namespace",
                    "label_values(concurrency_injector_requests_total, namespace)",
                ),
                _variable(
                    "app_namespace",
                    "Workload namespace",
                    "label_values(container_cpu_cfs_throttled_seconds_total, namespace)",
                ),
                _variable(
                    "webhook",
                    "Webhook name",
                    "label_values(apiserver_admission_webhook_fail_open_count, name)",
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def markdown() -> str:
    """One table row per query: the README's list of panels, generated so it stays true."""
    lines = ["| row | panel | query |", "|---|---|---|"]
    for row_title, row in ROWS:
        for title, _unit, _description, targets in row:
            for legend, expr in targets:
                shown = expr.replace("|", "\\|")
                lines.append(f"| {row_title} | {title} ({legend}) | `{shown}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    parser.add_argument("--markdown", action="store_true", help="print the panels as a table")
    args = parser.parse_args()
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run hack/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus metrics of the admission path, for SREs (served on GET /metrics)."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Histogram

NS = "concurrency_injector"

REQUESTS = Counter(
    f"{NS}_requests_total",
    "Admission requests answered, by outcome "
    "(patched, annotated, unchanged, audit, ignored, invalid, error).",
    ["outcome"],
)
LATENCY = Histogram(
    f"{NS}_request_duration_seconds",
    "Time to answer one admission request, from body read to response.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
INJECTIONS = Counter(
    f"{NS}_injections_total",
    "Containers given WEB_CONCURRENCY (or that would be, in audit mode), by runtime and source.",
    ["runtime", "source", "mode"],
)
SKIPS = Counter(
    f"{NS}_skips_total",
    "Pods or containers left unchanged, by reason.",
    ["reason"],
)
WARNINGS = Counter(
    f"{NS}_warnings_total",
    "Warnings returned to API clients, by kind (webhook/core/findings.py).",
    ["kind"],
)
ERRORS = Counter(
    f"{NS}_errors_total",
    "Internal errors; each one admitted a pod unpatched (fail-open).",
    ["stage"],
)
RESIZE_STALE = Counter(
    f"{NS}_resize_stale_total",
    "Containers whose in-place resize left the worker count set at creation stale (warned), "
    "by runtime.",
    ["runtime"],
)
CONNECTIONS_CLOSED = Counter(
    f"{NS}_connections_closed_total",
    "Connections the server closed on a bound, by reason (first-request-timeout, read-timeout, "
    "header-bytes, header-count, over-capacity, evicted, upgrade, stopping).",
    ["reason"],
)
OVER_LIMIT = Counter(
    f"{NS}_reviews_over_limit_total",
    "Reviews over a work limit, admitted unchanged with a warning (fail-open), by limit.",
    ["limit"],
)
CERT_RELOADS = Counter(
    f"{NS}_certificate_reloads_total",
    "Serving certificate reloads from disk, by result.",
    ["result"],
)

REGISTRY_LOOKUPS = Counter(
    f"{NS}_registry_lookups",
    "Image config lookups per image and admission, by outcome "
    "(hit, miss_ok, error, timeout, not_found, invalid, overloaded).",
    ["outcome"],
)
REGISTRY_CACHE_HITS = Counter(
    f"{NS}_registry_cache_hits",
    "Image config lookups answered from the cache without a registry request.",
)
REGISTRY_LOOKUP_SECONDS = Histogram(
    f"{NS}_registry_lookup_seconds",
    "Duration of registry round trips for one image (manifest, index, config blob).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)


@cache
def child(metric: Any, *labels: str) -> Any:
    """A labelled child, looked up once: `labels()` takes a lock and builds a key each call."""
    return metric.labels(*labels)

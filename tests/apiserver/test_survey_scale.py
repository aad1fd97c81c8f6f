"""`survey` over 5,000 pods of a real API server: read in pages, its memory bounded by a page.

The pods are created by concurrent creates (no kubelet or scheduler: they stay Pending), half
of them gunicorn (a row each), half redis (no row). The survey runs in this process under
tracemalloc, once in pages of 500 and once in a single page of 5,000: the peak of the paged
run is what the README states, and it must stay under the single-page peak. Figures go to the
suite's report. Marked slow: creating the pods takes most of a minute on two cores.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.apiserver.cluster import Cluster
from tests.apiserver.conftest import REPORT
from tests.apiserver.scenarios import container, pod
from webhook.config import Settings
from webhook.survey.cluster import Cluster as SurveyCluster
from webhook.survey.cluster import connect
from webhook.survey.survey import survey_cluster

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

PODS = 5000
PAGE = 500
CREATORS = 16
# The paged run's tracemalloc peak, measured here at 5,000 pods (see the README), with room.
PEAK_LIMIT_MIB = 40


def create_pods(cluster: Cluster, namespace: str) -> float:
    """PODS pods by concurrent creates; the seconds it took."""
    web = container("web", command=["gunicorn", "-w", "4", "app:app"], cpu="1")
    cache = container("cache", command=["redis-server"], cpu="1", image="redis:7")

    def create(i: int) -> None:
        body = pod(f"p-{i:05d}", namespace=namespace, containers=[web if i % 2 else cache])
        cluster.core.create_namespaced_pod(namespace, body, _preload_content=False)

    started = time.monotonic()
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(create, range(PODS)))
    return time.monotonic() - started


def peak_of_survey(cluster: Cluster, namespace: str, page_size: int) -> tuple[int, float, int]:
    """(rows, seconds, tracemalloc peak in bytes) of one survey of the namespace."""
    reader = SurveyCluster(connect(str(cluster.kubeconfig), None), page_size=page_size)
    tracemalloc.start()
    started = time.monotonic()
    rows, _ = asyncio.run(survey_cluster(reader, Settings(no_registry=True), namespace=namespace))
    seconds = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(rows), seconds, peak


def test_5000_pods_listed_in_pages_stay_under_a_measured_peak(cluster: Cluster) -> None:
    namespace = cluster.namespace(prefix="many")
    try:
        REPORT["survey: create 5000 pods (s)"] = round(create_pods(cluster, namespace), 1)
        rows, seconds, paged = peak_of_survey(cluster, namespace, PAGE)
        assert rows == PODS // 2
        REPORT["survey: 5000 pods, pages of 500 (s)"] = round(seconds, 1)
        REPORT["survey: 5000 pods, pages of 500, tracemalloc peak (MiB)"] = round(paged / 2**20, 1)
        rows, seconds, whole = peak_of_survey(cluster, namespace, PODS)
        assert rows == PODS // 2
        REPORT["survey: 5000 pods, one page (s)"] = round(seconds, 1)
        REPORT["survey: 5000 pods, one page, tracemalloc peak (MiB)"] = round(whole / 2**20, 1)
        assert paged < whole
        assert paged < PEAK_LIMIT_MIB * 2**20
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

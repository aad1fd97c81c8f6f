"""`survey`: every Python container of a cluster (or of manifests), and whether it is trapped.

Read-only. Each workload's pod template goes through the webhook's own handler (as `explain`
does), and webhook/survey/rows.py turns the decision into rows. On a cluster the lists are
read page by page: pods first, only to learn which nodes each workload's pods run on (a set
of node names per workload) and to report bare pods; then the workloads. No page is kept after
it is read, so memory grows with the rows (Python containers) and the workload count, not
with the pods.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import orjson

from webhook import wiring
from webhook.admission.handler import AdmissionHandler
from webhook.admission.types import EnvSourceReader
from webhook.config import Settings
from webhook.core import keys
from webhook.core.quantity import quantity
from webhook.core.types import Obj
from webhook.lru import LRU
from webhook.survey import explain as explaining
from webhook.survey.cluster import Cluster, Forbidden, Progress, connect
from webhook.survey.rows import ConfigMapValues, Nodes, Row, Summary, rows_for
from webhook.workloads import DocumentConfigMaps, InputError, configmap_keys, naming_file

# Workload kinds a pod's controller may be, and the kinds they roll up into.
ROLLED_UP = {"ReplicaSet": "Deployment", "Job": "CronJob"}
POD_OWNERS = frozenset({"ReplicaSet", "Job", "StatefulSet", "DaemonSet"})
WORKLOADS = (
    ("deployments", "Deployment"),
    ("statefulsets", "StatefulSet"),
    ("daemonsets", "DaemonSet"),
    ("cronjobs", "CronJob"),
    ("jobs", "Job"),
)
CONFIGMAP_CACHE = 4096
INJECTED = "read from its template: its pods already carry the webhook's values"
COLUMNS = (
    ("NAMESPACE", "namespace"),
    ("KIND", "kind"),
    ("NAME", "name"),
    ("CONTAINER", "container"),
    ("RUNTIME", "runtime"),
    ("CPU", "cpuLimit"),
    ("WORKERS", "currentWorkers"),
    ("FROM", "workersSource"),
    ("WOULD SET", "wouldSet"),
    ("VERDICT", "verdict"),
    ("REASON", "reason"),
)


def run(args: argparse.Namespace, settings: Settings, *, stdout: TextIO, stderr: TextIO) -> int:
    if args.filename:
        rows, summary = asyncio.run(survey_documents(args, settings))
    else:
        progress = Progress.if_terminal(stderr)
        cluster = Cluster(
            connect(args.kubeconfig, args.context), page_size=args.page_size, progress=progress
        )
        namespace = None if args.all_namespaces else (args.namespace or _context_namespace(args))
        rows, summary = asyncio.run(survey_cluster(cluster, settings, namespace=namespace))
        if progress is not None:
            progress.done()
    write(rows, summary, args.output, stdout)
    return 0


def _context_namespace(args: argparse.Namespace) -> str:
    """The kubeconfig context's namespace, as kubectl picks it (else `default`)."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:
        return "default"
    chosen = next((c for c in contexts if c.get("name") == args.context), active)
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


@dataclass
class Surveyor:
    """Decides each workload through the handler and collects its rows."""

    handler: AdmissionHandler
    settings: Settings
    summary: Summary = field(default_factory=Summary)
    rows: list[Row] = field(default_factory=list)
    # Manifests (`-f`): a workload that is not one is bad input, exit 2. A cluster's: a note, so
    # that one odd object does not hide the rest of the cluster.
    strict: bool = False

    async def add(
        self,
        workload: explaining.Workload,
        configmaps: ConfigMapValues,
        nodes: Nodes,
        *,
        injected: bool = False,
    ) -> None:
        """Decide one workload and keep its rows; `injected`: its pods already carry the
        webhook's values, which its template (what the row reads) does not show."""
        try:
            answer = await explaining.decide(self.handler, workload)
        except InputError as exc:
            if self.strict:
                raise
            self.summary.notes.append(f"skipped: {exc}")
            return
        if answer.decision is None:
            self.summary.notes.append(f"{workload.label}: not decided ({answer.outcome})")
            return
        rows = rows_for(
            namespace=workload.namespace,
            kind=workload.kind,
            name=workload.name,
            pod=workload.pod,
            decision=answer.decision,
            profiles=self.settings.profiles(),
            configmaps=configmaps,
            nodes=nodes,
        )
        if injected:
            rows = [replace(r, reason=f"{r.reason}; {INJECTED}") for r in rows]
        self.summary.add(rows)
        self.rows += rows


async def survey_documents(
    args: argparse.Namespace, settings: Settings
) -> tuple[list[Row], Summary]:
    """Manifests offline: ConfigMaps in the input answer envFrom; --node-cpus the node."""
    from webhook.cli import load_documents

    documents = load_documents(args.filename)
    values = _configmap_values(documents)
    nodes = Nodes(args.node_cpus, "--node-cpus") if args.node_cpus else Nodes(None, "")
    handler = _handler(settings, DocumentConfigMaps(documents))
    surveyor = Surveyor(handler, settings, strict=True)
    try:
        with naming_file(args.filename):
            for workload in explaining.workloads(documents):
                found = {
                    name: data
                    for (ns, name), data in values.items()
                    if not ns or not workload.namespace or ns == workload.namespace
                }
                await surveyor.add(workload, ConfigMapValues(found), nodes)
    finally:
        await handler.aclose()
    return surveyor.rows, surveyor.summary


def _configmap_values(documents: list[Any]) -> dict[tuple[str, str], dict[str, str]]:
    found: dict[tuple[str, str], dict[str, str]] = {}
    for namespace, name in configmap_keys(documents):
        for document in documents:
            for item in explaining._flat(document):
                metadata = item.get("metadata") or {}
                if (
                    item.get("kind") == "ConfigMap"
                    and metadata.get("name") == name
                    and str(metadata.get("namespace") or "") == namespace
                ):
                    data = item.get("data") or {}
                    found[(namespace, name)] = {str(k): str(v) for k, v in data.items()}
    return found


def _handler(settings: Settings, reader: EnvSourceReader) -> AdmissionHandler:
    return AdmissionHandler(
        settings, resolver=wiring.resolver(settings), env_reader=reader, record=False
    )


@dataclass
class Placement:
    """What the pods pass learns: which nodes each workload's pods run on."""

    nodes_of: dict[str, set[str]] = field(default_factory=dict)  # workload uid -> node names
    rolled_up: dict[str, str] = field(default_factory=dict)  # ReplicaSet/Job uid -> owner uid
    injected: set[str] = field(default_factory=set)  # workloads whose pods the webhook changed


async def survey_cluster(
    cluster: Cluster, settings: Settings, *, namespace: str | None
) -> tuple[list[Row], Summary]:
    """Every workload in `namespace` (None: all), page by page; 403s become notes."""
    from webhook.survey.command import cluster_configmaps

    handler = _handler(settings, cluster_configmaps(cluster))
    surveyor = Surveyor(handler, settings)
    try:
        cpus = _node_cpus(cluster, surveyor.summary)
        scopes: list[str | None] = [namespace]
        if namespace is None:
            try:
                next(cluster.pages("pods"), None)  # may this identity list cluster-wide?
            except Forbidden:
                scopes = list(cluster.namespaces())
        for scope in scopes:
            try:
                await _survey_scope(cluster, surveyor, scope, cpus)
            except Forbidden:
                surveyor.summary.forbidden.append(scope or "(cluster)")
    finally:
        await handler.aclose()
    surveyor.rows.sort(key=lambda r: (r.namespace, r.kind, r.name))
    return surveyor.rows, surveyor.summary


def _node_cpus(cluster: Cluster, summary: Summary) -> dict[str, int]:
    """Each node's CPU capacity (what `os.cpu_count()` reports in its containers)."""
    cpus: dict[str, int] = {}
    try:
        for node in cluster.nodes():
            name = str((node.get("metadata") or {}).get("name"))
            raw = ((node.get("status") or {}).get("capacity") or {}).get("cpu")
            if raw is not None:
                try:
                    cpus[name] = int(quantity(raw))
                except (ValueError, ArithmeticError):
                    continue
    except Forbidden:
        summary.notes.append("nodes not readable: runtimes that default to the CPU count unknown")
    return cpus


async def _survey_scope(
    cluster: Cluster, surveyor: Surveyor, namespace: str | None, cpus: dict[str, int]
) -> None:
    placement = Placement()
    values = _ClusterConfigMaps(cluster)
    for resource, kind in (("replicasets", "Deployment"), ("jobs", "CronJob")):
        for item in cluster.items(resource, namespace):
            owner = _controller(item)
            if owner is not None and owner.get("kind") == kind:
                placement.rolled_up[_uid(item)] = str(owner.get("uid"))
    for page in cluster.pages("pods", namespace):
        for pod in page:
            owner = _controller(pod)
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            if owner is not None and owner.get("kind") in POD_OWNERS:
                uid = str(owner.get("uid"))
                uid = placement.rolled_up.get(uid, uid)
                if node:
                    placement.nodes_of.setdefault(uid, set()).add(node)
                if keys.STATUS in ((pod.get("metadata") or {}).get("annotations") or {}):
                    placement.injected.add(uid)
                continue
            workload = _workload("Pod", pod, pod)
            await surveyor.add(workload, values.of(workload), _nodes({node} - {""}, cpus))
    for resource, kind in (*WORKLOADS, ("replicasets", "ReplicaSet")):
        for item in cluster.items(resource, namespace):
            owner = _controller(item)
            if owner is not None and ROLLED_UP.get(kind) == owner.get("kind"):
                continue  # reported through its Deployment or CronJob
            if kind == "ReplicaSet" and owner is not None:
                continue
            # A list's items carry no kind of their own.
            found = explaining.workloads([{**item, "kind": kind}])
            for workload in found:
                nodes = _nodes(placement.nodes_of.get(_uid(item), set()), cpus)
                injected = _uid(item) in placement.injected
                await surveyor.add(workload, values.of(workload), nodes, injected=injected)


def _workload(kind: str, item: Obj, pod: Obj) -> explaining.Workload:
    metadata = item.get("metadata") or {}
    return explaining.Workload(
        kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""), pod
    )


def _controller(item: Obj) -> Obj | None:
    for ref in (item.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _uid(item: Obj) -> str:
    return str((item.get("metadata") or {}).get("uid") or "")


def _nodes(names: set[str], cpus: dict[str, int]) -> Nodes:
    """The CPUs its processes see: the largest of its nodes, else the cluster's largest."""
    known = {n: cpus[n] for n in names if n in cpus}
    if known:
        name = max(known, key=lambda n: known[n])
        shown = f"node {name}" if len(known) == 1 else f"largest of {len(known)} nodes, {name}"
        return Nodes(known[name], shown)
    if cpus:
        name = max(cpus, key=lambda n: cpus[n])
        return Nodes(cpus[name], f"largest node {name}, not scheduled")
    return Nodes(None, "")


class _ClusterConfigMaps:
    """ConfigMap values for envFrom, read once each (bounded), with 403s remembered."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cache: LRU[tuple[str, str], tuple[dict[str, str] | None, str | None]] = LRU(
            CONFIGMAP_CACHE
        )

    def of(self, workload: explaining.Workload) -> ConfigMapValues:
        values: dict[str, dict[str, str] | None] = {}
        unreadable: dict[str, str] = {}
        for name in _envfrom_configmaps(workload.pod):
            data, why = self._read(workload.namespace, name)
            if why is not None:
                unreadable[name] = why
            elif data is not None:
                values[name] = data
        return ConfigMapValues(values, unreadable)

    def _read(self, namespace: str, name: str) -> tuple[dict[str, str] | None, str | None]:
        hit = self.cache.get((namespace, name))
        if hit is not None:
            return hit
        try:
            found = self.cluster.config_map(namespace, name)
            data = {str(k): str(v) for k, v in ((found or {}).get("data") or {}).items()}
            value: tuple[dict[str, str] | None, str | None] = (
                (data, None) if found is not None else (None, None)
            )
        except Forbidden:
            value = (None, "not readable: 403")
        self.cache.put((namespace, name), value)
        return value


def _envfrom_configmaps(pod: Obj) -> Iterator[str]:
    for field_name in ("initContainers", "containers"):
        for container in (pod.get("spec") or {}).get(field_name) or []:
            for source in container.get("envFrom") or []:
                name = (source.get("configMapRef") or {}).get("name")
                if name:
                    yield str(name)


def write(rows: list[Row], summary: Summary, output: str, stream: TextIO) -> None:
    if output == "json":
        value = {"rows": [r.as_dict() for r in rows], "summary": summary.as_dict()}
        stream.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    cells = [[_cell(getattr(r, key)) for _, key in COLUMNS] for r in rows]
    headers = [h for h, _ in COLUMNS]
    if output == "markdown":
        stream.write("| " + " | ".join(headers) + " |\n")
        stream.write("|" + "|".join("---" for _ in headers) + "|\n")
        for row in cells:
            stream.write("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |\n")
        stream.write(f"\n{summary.line()}\n")
    else:
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        for row in [headers, *cells]:
            stream.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            stream.write("\n")
        stream.write(f"{summary.line()}\n")
    for note in summary.notes:
        stream.write(f"note: {note}\n")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)

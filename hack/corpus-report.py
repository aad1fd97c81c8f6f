#!/usr/bin/env python3
"""How much of the corpus the webhook reaches: Python server/worker containers found vs targeted.

tests/corpus/expected.yaml says, per workload container of the corpus, which runtime it runs (or
"none") and why. This script runs `mutate -f FILE --no-registry -o yaml` on every corpus file, as a
user would, and counts a container as targeted when the output gives it a worker-count variable it
did not have (WEB_CONCURRENCY, GRANIAN_WORKERS, UWSGI_PROCESSES, CELERY_WORKER_CONCURRENCY, or an
application's own *_WORKERS / *_CONCURRENCY / *_PROCESSES / *_WORKER_AMOUNT variable) or when the
pod's concurrency-injector.io/status annotation lists it.

Figures per container:
  file       the whole file, as it comes (a file `mutate` refuses counts nothing);
  workloads  only the file's workload documents, fed together (what the webhook would do to those
             pods once the rest of the file no longer stops it);
  set        of those, the ones that actually got a worker variable (a target without a CPU
             limit is listed in the status but gets nothing).

    hack/corpus-report.py                       # the code in this checkout
    hack/corpus-report.py --source /tmp/before  # another tree:
                                                # git archive REV | tar -x -C /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from webhook.workloads import TEMPLATE_PATHS

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
STATUS = "concurrency-injector.io/status"
WORKER_VARS = {
    "WEB_CONCURRENCY",
    "GRANIAN_WORKERS",
    "UWSGI_PROCESSES",
    "UWSGI_WORKERS",
    "CELERY_WORKER_CONCURRENCY",
}
WORKER_LIKE = re.compile(r"(_WORKERS|_CONCURRENCY|_PROCESSES|_WORKER_AMOUNT)$")
# Where the pod spec sits in each kind that has one: the webhook's own table, plus "spec".
POD_PATHS: dict[str, tuple[str, ...]] = {
    kind: (*path, "spec") for kind, path in TEMPLATE_PATHS.items()
}
Key = tuple[str, str, str]  # file, Kind/name, container


def documents(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def pod_template(document: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(template metadata, pod spec) of a workload document, None for anything else."""
    if not isinstance(document, dict) or document.get("kind") not in POD_PATHS:
        return None
    path = POD_PATHS[document["kind"]]
    holder: Any = document
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
    spec = holder.get(path[-1]) if isinstance(holder, dict) else None
    if not isinstance(spec, dict):
        return None
    metadata = holder.get("metadata") if document["kind"] != "Pod" else document.get("metadata")
    return (metadata if isinstance(metadata, dict) else {}), spec


def containers(document: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    found = pod_template(document)
    if found is None:
        return
    for field, prefix in (("initContainers", "init:"), ("containers", "")):
        for container in found[1].get(field) or []:
            if isinstance(container, dict):
                yield prefix + str(container.get("name")), container


def workload_id(document: Any) -> str:
    return f"{document.get('kind')}/{(document.get('metadata') or {}).get('name')}"


def env_names(container: dict[str, Any]) -> set[str]:
    return {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}


def targeted(before: list[Any], after: list[Any], file: str) -> tuple[set[Key], set[Key]]:
    """(containers the output gives a worker variable or the status annotation lists,
    containers the output gives a worker variable)."""
    hits: set[Key] = set()
    given_var: set[Key] = set()
    given = {(workload_id(d), name): c for d in before for name, c in containers(d)}
    for document in after:
        found = pod_template(document)
        if found is None:
            continue
        try:
            status = json.loads((found[0].get("annotations") or {}).get(STATUS) or "{}")
        except ValueError:
            status = {}
        for name, container in containers(document):
            plain = name.removeprefix("init:")
            added = env_names(container) - env_names(given.get((workload_id(document), name), {}))
            worker = {v for v in added if v in WORKER_VARS or WORKER_LIKE.search(v or "")}
            if worker or (isinstance(status, dict) and plain in status):
                hits.add((file, workload_id(document), name))
            if worker:
                given_var.add((file, workload_id(document), name))
    return hits, given_var


def mutate(command: list[str], env: dict[str, str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "mutate", "-f", "-", "--no-registry", "-o", "yaml"],
        input=text,
        capture_output=True,
        text=True,
        env=env,
        cwd=env["PYTHONPATH"],
        timeout=300,
        check=False,
    )


def measure(path: Path, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    file = str(path.relative_to(CORPUS))
    text = path.read_text()
    given = documents(text)
    workloads = [d for d in given if pod_template(d) is not None]
    result: dict[str, Any] = {
        "file": file,
        "containers": {(file, workload_id(d), n) for d in workloads for n, _ in containers(d)},
    }
    whole = mutate(command, env, text)
    result["file_rc"] = whole.returncode
    result["file_error"] = (
        (whole.stderr.strip().splitlines() or [""])[-1] if whole.returncode else ""
    )
    result["file_hits"], _ = (
        targeted(given, documents(whole.stdout), file) if whole.returncode == 0 else (set(), set())
    )
    if workloads and len(workloads) < len(given):
        alone = mutate(command, env, yaml.safe_dump_all(workloads, sort_keys=False))
        result["alone_rc"] = alone.returncode
        result["alone_hits"], result["alone_set"] = (
            targeted(workloads, documents(alone.stdout), file)
            if alone.returncode == 0
            else (set(), set())
        )
    else:
        result["alone_rc"] = whole.returncode
        result["alone_hits"], result["alone_set"] = (
            targeted(given, documents(whole.stdout), file)
            if whole.returncode == 0
            else (set(), set())
        )
    return result


def load_expected() -> dict[Key, tuple[str, str]]:
    raw = yaml.safe_load((CORPUS / "expected.yaml").read_text()) or {}
    return {
        (file, workload, name): (entry[0], entry[1])
        for file, workloads in raw.items()
        for workload, names in workloads.items()
        for name, entry in names.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="tree whose webhook package to run (default: this checkout)",
    )
    args = parser.parse_args()
    command = [sys.executable, "-m", "webhook"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCURRENCY_INJECTOR_")}
    env["PYTHONPATH"] = str(args.source.resolve())
    files = sorted([*CORPUS.glob("manifests/*.yaml"), *CORPUS.glob("charts/*.yaml")])
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda p: measure(p, command, env), files))

    expected = load_expected()
    present: set[Key] = set().union(*(r["containers"] for r in results))
    file_hits: set[Key] = set().union(*(r["file_hits"] for r in results))
    alone_hits: set[Key] = set().union(*(r["alone_hits"] for r in results))
    alone_set: set[Key] = set().union(*(r["alone_set"] for r in results))
    problems = [f"not classified in expected.yaml: {k}" for k in sorted(present - expected.keys())]
    problems += [
        f"in expected.yaml but not in the corpus: {k}" for k in sorted(expected.keys() - present)
    ]

    charts = sum(1 for f in files if f.parent.name == "charts")
    print(f"source: {args.source.resolve()}")
    print(
        f"corpus: {len(files)} files ({charts} rendered charts), {len(present)} workload containers"
    )
    refused = [r for r in results if r["file_rc"] != 0]
    print(f"files mutate exits non-zero on: {len(refused)} of {len(files)}")
    for r in refused:
        print(f"  {r['file']}: exit {r['file_rc']}: {r['file_error'][:150]}")

    python = {k: v for k, v in expected.items() if v[0] != "none" and k in present}
    by_runtime: dict[str, Counter[str]] = defaultdict(Counter)
    for key, (runtime, _) in python.items():
        by_runtime[runtime]["found"] += 1
        by_runtime[runtime]["file"] += key in file_hits
        by_runtime[runtime]["workloads"] += key in alone_hits
        by_runtime[runtime]["set"] += key in alone_set
    print()
    header = (
        "runtime",
        "found",
        "targeted (file)",
        "targeted (workloads)",
        "variable set (workloads)",
    )
    print(f"{header[0]:<12} {header[1]:>6} {header[2]:>16} {header[3]:>21} {header[4]:>25}")
    rows = sorted(by_runtime, key=lambda r: (-by_runtime[r]["found"], r))
    for runtime in rows:
        c = by_runtime[runtime]
        print(f"{runtime:<12} {c['found']:>6} {c['file']:>16} {c['workloads']:>21} {c['set']:>25}")
    total = Counter()
    for c in by_runtime.values():
        total.update(c)
    print(
        f"{'total':<12} {total['found']:>6} {total['file']:>16} "
        f"{total['workloads']:>21} {total['set']:>25}"
    )

    print("\nPython servers/workers not targeted (workloads fed alone):")
    for key in sorted(python.keys() - alone_hits):
        runtime, reason = python[key]
        print(f"  {key[0]} {key[1]} {key[2]}: {runtime} ({reason})")
    false = sorted((file_hits | alone_hits) - python.keys())
    print(f"\ntargeted although classified none: {len(false)}")
    for key in false:
        print(f"  {key[0]} {key[1]} {key[2]}: {expected.get(key, ('unclassified', ''))[1]}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

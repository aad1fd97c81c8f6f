"""Real public manifests and rendered Helm charts through `mutate`, as users run it.

tests/corpus/ holds Deployments, Jobs, CronJobs, StatefulSets and Pods copied verbatim from
public repositories (manifests/, each with its source in a header comment) and whole Helm charts
rendered with a real helm (charts/); tests/corpus/README.md says where each came from. For every
file, `concurrency-injector mutate -f FILE --no-registry -o yaml` must:

- exit 0, with no traceback;
- give back every document, in order, and every document that is not a workload unchanged;
- keep every container's name, image, command and args;
- be idempotent: its output, mutated again, is the same output.

Each file costs two CLI runs (about a second each, mostly imports); they run a few at a time, and
the module is `slow`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import clean_env, cli_command
from webhook.workloads import TEMPLATE_PATHS

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted([*CORPUS.glob("manifests/*.yaml"), *CORPUS.glob("charts/*.yaml")])

# Where the pod spec sits in each kind that has one: the webhook's own table, plus "spec".
POD_PATHS: dict[str, tuple[str, ...]] = {
    kind: (*path, "spec") for kind, path in TEMPLATE_PATHS.items()
}
KEPT = ("name", "image", "command", "args")

pytestmark = pytest.mark.slow


def mutate(
    *, path: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    source = str(path) if path is not None else "-"
    return subprocess.run(
        [*cli_command(), "mutate", "-f", source, "--no-registry", "-o", "yaml"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
    )


@dataclass
class Passes:
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str] | None


def _both(path: Path) -> Passes:
    first = mutate(path=path)
    second = mutate(stdin=first.stdout) if first.returncode == 0 else None
    return Passes(first, second)


@pytest.fixture(scope="module")
def passes() -> Iterator[dict[Path, Passes]]:
    """Both passes of every file, run a few files at a time."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        yield dict(zip(FILES, pool.map(_both, FILES), strict=True))


def documents(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def pod_spec(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict) or document.get("kind") not in POD_PATHS:
        return None
    spec: Any = document
    for key in POD_PATHS[document["kind"]]:
        spec = spec.get(key) if isinstance(spec, dict) else None
    return spec if isinstance(spec, dict) else None


def containers(document: Any) -> dict[str, dict[str, Any]]:
    spec = pod_spec(document) or {}
    found = {}
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            found[f"{field}/{container.get('name')}"] = {k: container.get(k) for k in KEPT}
    return found


def test_the_corpus_is_there() -> None:
    assert len(list(CORPUS.glob("manifests/*.yaml"))) >= 25
    assert list(CORPUS.glob("charts/*.yaml"))
    for path in CORPUS.glob("manifests/*.yaml"):
        assert path.read_text().startswith("# source: "), f"{path.name} does not name its source"


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_mutate_takes_the_file_as_it_comes(path: Path, passes: dict[Path, Passes]) -> None:
    given = documents(path.read_text())
    first, second = passes[path].first, passes[path].second
    assert "Traceback" not in first.stderr, first.stderr
    assert first.returncode == 0, first.stderr

    out = documents(first.stdout)
    assert len(out) == len(given), "documents were added or dropped"
    for n, (before, after) in enumerate(zip(given, out, strict=True), 1):
        where = f"document {n} ({before.get('kind')} {before.get('metadata', {}).get('name')})"
        if pod_spec(before) is None:
            assert after == before, f"{where} is not a workload but changed"
            continue
        assert after["kind"] == before["kind"], where
        assert after.get("metadata", {}).get("name") == before.get("metadata", {}).get("name"), (
            where
        )
        assert containers(after) == containers(before), (
            f"{where}: a container's name, image, command or args changed"
        )

    assert second is not None
    assert "Traceback" not in second.stderr, second.stderr
    assert second.returncode == 0, second.stderr
    assert documents(second.stdout) == out, "a second pass changed the output: not idempotent"

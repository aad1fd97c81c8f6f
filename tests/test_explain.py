"""`explain`: every container of every pod template, its decision and every reason.

The decision is the server's (the handler's); these tests hold that every container gets one,
with a reason, on the whole corpus, and that non-targets say why, rule by rule.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.podgen import container, gunicorn, pod
from tests.servers import clean_env, cli_command
from webhook.cli import build_parser
from webhook.config import Settings
from webhook.core.decision import decide
from webhook.core.options import Options
from webhook.survey import command
from webhook.workloads import TEMPLATE_PATHS

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted([*CORPUS.glob("manifests/*.yaml"), *CORPUS.glob("charts/*.yaml")])
MIGRATE_THEN_SERVE = ["python", "manage.py", "migrate", "&&", "gunicorn", "app:app"]


def explain(path: Path, *extra: str) -> tuple[int, str, str]:
    """`explain -f PATH --no-registry -o json` in this process."""
    args = build_parser().parse_args(["explain", "-f", str(path), "-o", "json", *extra])
    out, err = io.StringIO(), io.StringIO()
    code = command.run(args, Settings(no_registry=True), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def containers_in(path: Path) -> list[str]:
    """Every container name of every pod template in the file, read independently.

    Custom resources (a RayCluster, an InferenceService) hold pod specs the webhook never
    sees: only the kinds with a pod template count.
    """
    names = []
    for document in yaml.safe_load_all(path.read_text()):
        if not isinstance(document, dict) or document.get("kind") not in TEMPLATE_PATHS:
            continue
        for spec in _pod_specs(document):
            for field in ("initContainers", "containers"):
                names += [c["name"] for c in spec.get(field) or []]
    return names


def _pod_specs(value: Any) -> list[dict[str, Any]]:
    """Pod specs anywhere in a document: any mapping that holds a `containers` list."""
    if isinstance(value, dict):
        if isinstance(value.get("containers"), list):
            return [value]
        return [s for v in value.values() for s in _pod_specs(v)]
    if isinstance(value, list):
        return [s for v in value for s in _pod_specs(v)]
    return []


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_corpus_container_has_a_decision_and_a_reason(path: Path, tmp_path: Path) -> None:
    code, out, err = explain(path)
    assert code == 0, err
    explained = orjson.loads(out)["containers"]
    assert sorted(e["container"] for e in explained) == sorted(containers_in(path))
    for e in explained:
        assert e["decision"] in ("target", "not-target"), e
        assert e["reasons"], e
        assert all(isinstance(r, str) and r.strip() for r in e["reasons"]), e
        assert e["object"].startswith(f"{e['kind']} "), e
        if e["decision"] == "target":
            assert e["runtime"], e


def test_exec_form_and_is_an_argument_and_explain_says_so() -> None:
    decision = decide(pod(container("app", command=MIGRATE_THEN_SERVE)), Options())
    assert decision.patch == []
    assert [(o.name, o.reason) for o in decision.others] == [
        (
            "app",
            "its command 'python manage.py migrate && gunicorn app:app' starts 'python', which "
            "no profile names: in an exec-form argv there is no shell, so '&&' is only an "
            "argument; with a command set, the image's label and Cmd do not apply",
        )
    ]


@pytest.mark.parametrize(
    ("annotations", "init", "expected"),
    [
        (
            {"concurrency-injector.io/inject": "false"},
            [],
            {
                "web": "the pod's annotation concurrency-injector.io/inject=false opts every "
                "container out",
                "side": "the pod's annotation concurrency-injector.io/inject=false opts every "
                "container out",
            },
        ),
        (
            {"concurrency-injector.io/containers": "web"},
            [],
            {"side": "not named in the pod's annotation concurrency-injector.io/containers"},
        ),
        (
            {"concurrency-injector.io/runtime": "python"},
            [],
            {"side": "concurrency-injector.io/runtime applies to the default container 'web' only"},
        ),
        (
            {},
            [container("setup", command=["gunicorn", "app"])],
            {
                "setup": "an init container: a target only when named in "
                "concurrency-injector.io/containers",
                "side": "its image's metadata was not read; the image 'envoyproxy/envoy:v1' "
                "matches no profile by name",
            },
        ),
        (
            {"concurrency-injector.io/native": "web"},
            [],
            {
                "web": "decided by the native admission policy (annotation "
                "concurrency-injector.io/native)",
                "side": "its image's metadata was not read; the image 'envoyproxy/envoy:v1' "
                "matches no profile by name",
            },
        ),
        (
            {"concurrency-injector.io/native": "web", "concurrency-injector.io/runtime": "python"},
            [],
            {
                "web": "decided by the native admission policy (annotation "
                "concurrency-injector.io/native)",
                "side": "concurrency-injector.io/runtime applies to the default container 'web' only",
            },
        ),
    ],
    ids=[
        "opted-out",
        "listed",
        "runtime-annotation",
        "init-and-detection",
        "native",
        "native-runtime-annotation",
    ],
)
def test_every_rule_gives_non_targets_a_reason(
    annotations: dict[str, str], init: list[dict[str, Any]], expected: dict[str, str]
) -> None:
    p = pod(
        gunicorn("web"),
        container("side", image="envoyproxy/envoy:v1"),
        annotations=annotations,
        init=init,
    )
    decision = decide(p, Options())
    assert {o.name: o.reason for o in decision.others} == expected


def test_text_output_names_each_object_and_container(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        container("api", command=["gunicorn", "-w", "9", "app:app"], cpu="1"),
                        container("migrate", command=MIGRATE_THEN_SERVE),
                    ]
                }
            }
        },
    }
    source = tmp_path / "web.yaml"
    source.write_text(yaml.safe_dump(manifest))
    done = subprocess.run(
        [*cli_command(), "explain", "-f", "-", "--no-registry"],
        input=source.read_text(),
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Deployment shop/web container 'api': target (gunicorn)",
        "  - runs gunicorn, known from its command line",
        "  - CPU limit 1 (its own limit)",
        "  - sets WEB_CONCURRENCY=1, CPU_LIMIT from the downward API (limits.cpu), "
        "PYTHON_CPU_COUNT=1",
        "  - warning: container 'api': --workers 9 in args overrides WEB_CONCURRENCY, above the CPU limit (1)",
        "Deployment shop/web container 'migrate': not-target",
        "  - its command 'python manage.py migrate && gunicorn app:app' starts 'python', which "
        "no profile names: in an exec-form argv there is no shell, so '&&' is only an "
        "argument; with a command set, the image's label and Cmd do not apply",
    ]


def test_bad_input_exits_2_naming_the_object(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n")
    code, out, err = explain(source)
    assert code == 2
    assert out == ""
    assert f"{source}: document 1: Deployment web has no spec.template" in err


def test_a_pod_of_the_wrong_shape_exits_2_naming_the_file(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\n"
        "spec: {containers: [{name: web, command: [gunicorn, 5]}]}\n"
    )
    code, out, err = explain(source)
    assert (code, out) == (2, "")
    assert err.startswith(f"concurrency-injector: {source}: Pod ns/p: "), err


def test_lists_and_admission_reviews_are_explained_by_the_object_they_hold(tmp_path: Path) -> None:
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "migrate", "namespace": "shop"},
                "spec": {"template": {"spec": {"containers": [container("m", command=["ls"])]}}},
            }
        ],
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "1",
            "namespace": "shop",
            "object": pod(gunicorn("web")) | {"metadata": {"name": "api"}},
        },
    }
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump_all([listed, review]))
    code, out, err = explain(source)
    assert code == 0, err
    assert [(e["object"], e["container"], e["decision"]) for e in orjson.loads(out)["containers"]] == [
        ("Job shop/migrate", "m", "not-target"),
        ("Pod shop/api", "web", "target"),
    ]

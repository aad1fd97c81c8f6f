"""`mutate` and the server decide every pod the same way (SPEC "One decision, everywhere").

Each pod goes to both: the command line (`run_mutate` on a file that holds the pod, as
`concurrency-injector mutate -o json` runs it) and the server (its ASGI app in-process, and
some through a real `serve` process over TLS, with the real CLI beside it). Both must give the
same warnings and the same resulting pod. The pods: the property tests' generated pods, every
pod template of the corpus, and pods at and just above each of the server's work caps.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import subprocess
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.podgen import container, gunicorn, pod
from tests.servers import Pki, WebhookServer, clean_env, cli_command
from tests.strategies import crowded_pods, every_setting, pods
from webhook.admission.review import pod_create_review
from webhook.config import Settings
from webhook.exitcodes import EXIT_INPUT
from webhook.mutate import run_mutate
from webhook.serving.app import Webhook
from webhook.workloads import object_name, pod_slots

Obj = dict[str, Any]
CORPUS = Path(__file__).resolve().parent / "corpus"
CORPUS_FILES = sorted([*CORPUS.glob("manifests/*.yaml"), *CORPUS.glob("charts/*.yaml")])
CAPS = Settings()  # the server's default caps, which `mutate` applies too
EXAMPLES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a caller sees: the warnings, the pod after the patch, and whether it was patched."""

    warnings: list[str]
    pod: Obj
    patched: bool


def by_cli(p: Obj, s: Settings) -> Outcome:
    """`mutate -o json` on a file holding the pod: stdout is the pod, stderr the warnings.

    Exit 2 (with the same output) only where a warning says a value is invalid.
    """
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as source:
        source.write(orjson.dumps(p))
        source.flush()
        out, err = io.StringIO(), io.StringIO()
        code = run_mutate(source.name, "json", s, stdout=out, stderr=err)
        outcome = _cli_outcome(p, out.getvalue(), err.getvalue(), source=source.name)
    assert code == (EXIT_INPUT if any("invalid" in w for w in outcome.warnings) else 0), err
    return outcome


def _cli_outcome(p: Obj, stdout: str, stderr: str, *, source: str) -> Outcome:
    prefix = f"Warning: {source}:1: Pod {object_name(p)}: "
    lines = stderr.splitlines()
    assert all(line.startswith(prefix) for line in lines), stderr
    result = orjson.loads(stdout)
    return Outcome([line[len(prefix) :] for line in lines], result, result != p)


def review_of(p: Obj) -> Obj:
    """The Pod CREATE review for `p`, in the namespace `mutate` gives it (the pod's own)."""
    namespace = str((p.get("metadata") or {}).get("namespace") or "")
    return pod_create_review(p, namespace=namespace, uid="differential")


def _server_outcome(p: Obj, response: Obj) -> Outcome:
    assert response["allowed"] is True
    encoded = response.get("patch")
    ops = orjson.loads(base64.b64decode(encoded)) if encoded else []
    result = jsonpatch.apply_patch(p, ops) if ops else p
    return Outcome(list(response.get("warnings") or []), result, bool(ops))


async def _call(app: Webhook, body: bytes) -> tuple[int, bytes]:
    """One POST /mutate through the ASGI app, as uvicorn would deliver it."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mutate",
        "query_string": b"timeout=10s",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


_APPS: dict[Settings, Webhook] = {}


def by_server(p: Obj, s: Settings) -> Outcome:
    """The server's ASGI app (one per setting, kept: its caches are part of what it does)."""
    app = _APPS.setdefault(s, Webhook(s))
    status, body = asyncio.run(_call(app, orjson.dumps(review_of(p))))
    assert status == 200, body
    return _server_outcome(p, orjson.loads(body)["response"])


def assert_agree(p: Obj, s: Settings) -> Outcome:
    s = dataclasses.replace(s, no_registry=True)
    server, cli = by_server(p, s), by_cli(p, s)
    assert cli == server
    return server


# --- generated pods ---------------------------------------------------------------------------


@EXAMPLES
@given(p=st.one_of(pods(), crowded_pods), s=every_setting)
def test_generated_pods_get_the_same_answer(p: Obj, s: Settings) -> None:
    assert_agree(p, s)


# --- the corpus -------------------------------------------------------------------------------


def corpus_pods() -> Iterator[Any]:
    for path in CORPUS_FILES:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for n, document in enumerate(documents, 1):
            for slot in pod_slots(document, where=f"{path.name} {n}"):
                namespace = (document.get("metadata") or {}).get("namespace")
                template = dict(slot.pod)
                if namespace and "namespace" not in (template.get("metadata") or {}):
                    template["metadata"] = {
                        **(template.get("metadata") or {}),
                        "namespace": namespace,
                    }
                yield pytest.param(
                    {"apiVersion": "v1", "kind": "Pod", **template},
                    id=f"{path.stem}-{n}-{slot.owner.replace(' ', '-')}",
                )


CORPUS_PODS = list(corpus_pods())


def test_the_corpus_has_pods() -> None:
    assert len(CORPUS_PODS) >= 30


@pytest.mark.parametrize("p", CORPUS_PODS)
def test_corpus_pods_get_the_same_answer(p: Obj) -> None:
    assert_agree(p, Settings())


def test_the_corpus_is_decided_not_just_passed_through() -> None:
    """A differential test over pods nobody patches would prove little."""
    outcomes = [assert_agree(param.values[0], Settings()) for param in CORPUS_PODS]
    assert sum(o.patched for o in outcomes) >= 5
    assert any(o.warnings for o in outcomes)


# --- the work caps ----------------------------------------------------------------------------


def with_containers(count: int) -> Obj:
    return pod(*(gunicorn(f"c{i}", cpu="1") for i in range(count)))


def with_env_entries(count: int) -> Obj:
    env = [{"name": f"V{i}", "value": "x"} for i in range(count)]
    return pod(gunicorn(env=env))


def with_annotation_bytes(size: int) -> Obj:
    key = "example.com/padding"
    return pod(gunicorn(), annotations={key: "x" * (size - len(key))})


CAP_PODS = {
    "containers": (with_containers, CAPS.max_containers),
    "env-entries": (with_env_entries, CAPS.max_env_entries),
    "annotation-bytes": (with_annotation_bytes, CAPS.max_annotation_bytes),
}


@pytest.mark.parametrize("over", [0, 1], ids=["at-cap", "over-cap"])
@pytest.mark.parametrize("limit", list(CAP_PODS))
def test_pods_at_and_over_each_cap_get_the_same_answer(limit: str, over: int) -> None:
    build, cap = CAP_PODS[limit]
    outcome = assert_agree(build(cap + over), Settings())
    capped = [w for w in outcome.warnings if f"over the {limit} limit" in w]
    assert (outcome.patched, len(capped)) == ((False, 1) if over else (True, 0))


def test_a_pod_with_101_containers_is_left_unchanged_by_both() -> None:
    p = with_containers(101)
    outcome = assert_agree(p, Settings())
    assert outcome == Outcome(
        ["concurrency-injector: pod over the containers limit (101 > 100), admitted unchanged"],
        p,
        patched=False,
    )


# --- a real server and the real command line ------------------------------------------------


REAL_PODS = {
    "101-containers": with_containers(101),
    "100-containers": with_containers(100),
    "target": pod(gunicorn(cpu="1500m"), container("redis", command=["redis-server"])),
    "listed-missing": pod(
        gunicorn(), annotations={"concurrency-injector.io/containers": "web,ghost"}
    ),
}


@pytest.fixture(scope="module")
def real_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with WebhookServer(pki, tmp_path_factory.mktemp("differential") / "server.log") as server:
        yield server


def by_real_cli(p: Obj, tmp_path: Path) -> Outcome:
    source = tmp_path / "pod.json"
    source.write_bytes(orjson.dumps(p))
    done = subprocess.run(
        [*cli_command(), "mutate", "-f", str(source), "-o", "json", "--no-registry"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return _cli_outcome(p, done.stdout, done.stderr, source=str(source))


@pytest.mark.parametrize("name", list(REAL_PODS))
def test_a_real_server_and_the_real_cli_agree(
    name: str, real_server: WebhookServer, tmp_path: Path
) -> None:
    p = REAL_PODS[name]
    with real_server.client() as client:
        reply = client.review(review_of(p))
    assert reply.status == 200, reply.body
    served = _server_outcome(p, reply.response)
    assert by_real_cli(p, tmp_path) == served
    assert served.patched == (name != "101-containers")

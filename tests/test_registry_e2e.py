"""Detection from image metadata end to end: a real registry, the real server and the CLI.

Images are pushed to a real `docker-registry`; the real webhook server (over verified TLS)
and `concurrency-injector mutate` read them with `--insecure-registry` and decide from the
image's label or Entrypoint/Cmd.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.podgen import container, pod, review
from tests.registry_server import Pusher, RegistryServer
from tests.servers import (
    LOOPBACK,
    Client,
    Pki,
    clean_env,
    cli_command,
    client_context,
    free_port,
    stop_group,
    wait_until,
)

LABEL = "io.concurrency-injector.runtime"


@pytest.fixture(scope="module")
def images(plain_registry: tuple[RegistryServer, Pusher]) -> dict[str, str]:
    server, pusher = plain_registry
    pusher.image("shop/web", "1.0", config={"Labels": {LABEL: "gunicorn"}, "Cmd": ["python", "x.py"]})
    pusher.image("shop/api", "2.0", config={"Entrypoint": ["uvicorn"], "Cmd": ["main:app"]}, oci=True)
    pusher.image("shop/plain", "1.0", config={"Cmd": ["python", "job.py"]})
    host = server.host
    return {
        "labelled": f"{host}/shop/web:1.0",
        "entrypoint": f"{host}/shop/api:2.0",
        "plain": f"{host}/shop/plain:1.0",
        "missing": f"{host}/shop/nothing:9",
        "host": host,
    }


def status(patch: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(patch[0]["value"]["concurrency-injector.io/status"])  # type: ignore[no-any-return]


def test_mutate_reads_the_registry(images: dict[str, str]) -> None:
    p = pod(
        container("web", image=images["labelled"]),
        container("api", image=images["entrypoint"]),
        container("job", image=images["plain"]),
        container("gone", image=images["missing"]),
        container("worker", image=images["labelled"], command=["celery", "worker"]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "mutate", "-f", "-", "-o", "patch",
         "--insecure-registry", images["host"]],
        input=json.dumps(p), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    found = status(json.loads(result.stdout))
    assert {name: (s["runtime"], s["source"]) for name, s in found.items()} == {
        "web": ("gunicorn", "image-label"),
        "api": ("uvicorn", "image-command"),
        "worker": ("celery", "command"),  # its own command decides, not the image's label
    }


@pytest.fixture(scope="module")
def server(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Pki]]:
    work = tmp_path_factory.mktemp("e2e")
    pki = Pki.create(work / "pki")
    port = free_port()
    log = (work / "server.log").open("ab")
    proc = subprocess.Popen(
        [*cli_command(), "serve", "--cert-file", str(pki.cert_file), "--key-file", str(pki.key_file),
         "--host", LOOPBACK, "--port", str(port), "--insecure-registry", images["host"]],
        env=clean_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )

    def healthy() -> bool:
        try:
            with Client(port, client_context(pki.ca.cert_pem)) as c:
                return c.get("/healthz").status == 200
        except OSError:
            return False

    try:
        assert wait_until(healthy, timeout=30), Path(log.name).read_text()
        yield port, pki
    finally:
        stop_group(proc)
        log.close()


def test_server_detects_from_image_label_and_entrypoint(server: tuple[int, Pki], images: dict[str, str]) -> None:
    port, pki = server
    p = pod(container("web", image=images["labelled"]), container("api", image=images["entrypoint"], cpu="1"))
    with Client(port, client_context(pki.ca.cert_pem)) as client:
        reply = client.review(review(p, uid="e2e-1"))
        metrics = client.get("/metrics").body.decode()
    response = reply.json()["response"]
    patch = json.loads(base64.b64decode(response["patch"]))
    assert {n: (s["source"], s["set"]["WEB_CONCURRENCY"]) for n, s in status(patch).items()} == {
        "web": ("image-label", "2"),
        "api": ("image-command", "1"),
    }
    assert 'concurrency_injector_injections_total{mode="enforce",runtime="gunicorn",source="image-label"}' in metrics
    assert "concurrency_injector_registry_lookups_total" in metrics


def test_server_fails_open_to_the_rest_when_an_image_is_missing(
    server: tuple[int, Pki], images: dict[str, str]
) -> None:
    port, pki = server
    p = pod(container("gone", image=images["missing"]), container("web", command=["gunicorn", "a"]))
    with Client(port, client_context(pki.ca.cert_pem)) as client:
        response = client.review(review(p, uid="e2e-2")).json()["response"]
    assert response["allowed"] is True
    assert list(status(json.loads(base64.b64decode(response["patch"])))) == ["web"]

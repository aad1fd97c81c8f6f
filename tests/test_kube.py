"""ConfigMapReader: the real `kubernetes` client against a stand-in for the API server.

`StandInConfigMapServer` is a stand-in for the API server (there is none here): an HTTP server
that serves ConfigMaps from memory, can be slowed down or made to refuse, and records every
path asked for, so the tests can show that no Secret is ever requested. The kind e2e suite runs
the same reader against a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from webhook.admission.types import EnvSourceReader
from webhook.config import Settings
from webhook.kube import ConfigMapReader
from webhook.wiring import in_cluster_problem

NAMESPACE = "shop"
CONFIGMAP_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps/([^/?]+)$")


class StandInConfigMapServer:
    """Stand-in for the API server: GET of ConfigMaps only, from memory, over HTTP."""

    def __init__(self) -> None:
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.paths: list[str] = []
        self.delay: dict[str, float] = {}
        self.status: dict[str, int] = {}
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.http.daemon_threads = True
        self.thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def add(self, name: str, data: dict[str, str] | None = None,
            binary: dict[str, str] | None = None) -> None:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "namespace": NAMESPACE}}
        if data is not None:
            body["data"] = data
        if binary is not None:
            body["binaryData"] = binary
        self.configmaps[(NAMESPACE, name)] = body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.paths.append(path)
                m = CONFIGMAP_PATH.match(path)
                name = m.group(2) if m else ""
                time.sleep(server.delay.get(name, 0))
                found = server.configmaps.get((m.group(1), name)) if m else None
                code = server.status.get(name, 200 if found else 404)
                body = found if code == 200 else {"kind": "Status", "code": code}
                raw = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up first

        return Handler


@pytest.fixture
def standin() -> Iterator[StandInConfigMapServer]:
    server = StandInConfigMapServer()
    server.thread.start()
    yield server
    server.http.shutdown()
    server.http.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reader(standin: StandInConfigMapServer, clock: Clock | None = None) -> ConfigMapReader:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{standin.http.server_address[1]}"
    api = client.CoreV1Api(client.ApiClient(configuration))
    return ConfigMapReader(api, clock=clock or Clock())


def test_is_an_env_source_reader(standin: StandInConfigMapServer) -> None:
    typed: EnvSourceReader = reader(standin)
    assert callable(typed.configmap_keys)


async def test_standin_keys_of_data_and_binary_data(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"WEB_CONCURRENCY": "4", "LOG_LEVEL": "info"}, binary={"BLOB": "AA=="})
    standin.add("empty")
    keys = await reader(standin).configmap_keys(NAMESPACE, ["web", "empty"], timeout=2)
    assert keys == {
        "web": frozenset({"WEB_CONCURRENCY", "LOG_LEVEL", "BLOB"}),
        "empty": frozenset(),
    }


async def test_standin_missing_configmap_defines_no_keys(standin: StandInConfigMapServer) -> None:
    r = reader(standin)
    assert await r.configmap_keys(NAMESPACE, ["gone"], timeout=2) == {"gone": frozenset()}
    assert await r.configmap_keys(NAMESPACE, ["gone"], timeout=2) == {"gone": frozenset()}
    assert len(standin.paths) == 1  # the answer is cached like any other


async def test_standin_refused_read_is_unknown_and_not_cached(
    standin: StandInConfigMapServer,
) -> None:
    standin.add("locked", data={"A": "1"})
    standin.status["locked"] = 403
    r = reader(standin)
    assert await r.configmap_keys(NAMESPACE, ["locked"], timeout=2) == {}
    del standin.status["locked"]
    assert await r.configmap_keys(NAMESPACE, ["locked"], timeout=2) == {"locked": frozenset({"A"})}


async def test_standin_cache_lasts_its_ttl(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"A": "1"})
    clock = Clock()
    r = reader(standin, clock)
    assert await r.configmap_keys(NAMESPACE, ["web"], timeout=2) == {"web": frozenset({"A"})}
    standin.add("web", data={"A": "1", "B": "2"})
    clock.now += 29
    assert await r.configmap_keys(NAMESPACE, ["web"], timeout=2) == {"web": frozenset({"A"})}
    assert len(standin.paths) == 1
    clock.now += 2
    assert await r.configmap_keys(NAMESPACE, ["web"], timeout=2) == {"web": frozenset({"A", "B"})}
    assert len(standin.paths) == 2


async def test_standin_cache_is_per_namespace(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"A": "1"})
    r = reader(standin)
    await r.configmap_keys(NAMESPACE, ["web"], timeout=2)
    assert await r.configmap_keys("other", ["web"], timeout=2) == {"web": frozenset()}
    assert standin.paths == [f"/api/v1/namespaces/{NAMESPACE}/configmaps/web",
                             "/api/v1/namespaces/other/configmaps/web"]


async def test_standin_slow_read_is_left_out_within_the_budget(
    standin: StandInConfigMapServer,
) -> None:
    standin.add("fast", data={"A": "1"})
    standin.add("slow", data={"B": "2"})
    standin.delay["slow"] = 0.6
    r = reader(standin)
    started = time.monotonic()
    keys = await r.configmap_keys(NAMESPACE, ["fast", "slow"], timeout=0.3)
    elapsed = time.monotonic() - started
    assert keys == {"fast": frozenset({"A"})}
    assert elapsed < 0.55
    await asyncio.sleep(0.1)
    # The late answer was dropped; the abandoned call ended on its own request timeout.
    assert await r.configmap_keys(NAMESPACE, ["fast"], timeout=0.3) == {"fast": frozenset({"A"})}


async def test_standin_names_are_read_once_each(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"A": "1"})
    keys = await reader(standin).configmap_keys(NAMESPACE, ["web", "web", "web"], timeout=2)
    assert keys == {"web": frozenset({"A"})}
    assert len(standin.paths) == 1


async def test_no_budget_reads_nothing(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"A": "1"})
    assert await reader(standin).configmap_keys(NAMESPACE, ["web"], timeout=0) == {}
    assert standin.paths == []


async def test_standin_secrets_are_never_requested(standin: StandInConfigMapServer) -> None:
    standin.add("web", data={"A": "1"})
    r = reader(standin)
    await r.configmap_keys(NAMESPACE, ["web", "creds", "db-password"], timeout=2)
    assert standin.paths
    assert all("/configmaps/" in p for p in standin.paths)
    assert not any("/secrets" in p for p in standin.paths)


async def test_only_the_configmap_call_is_used() -> None:
    """An API object offering nothing but the ConfigMap read is enough: no other call exists."""

    class OnlyConfigMaps:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def read_namespaced_config_map(
            self, name: str, namespace: str, *, _request_timeout: float
        ) -> Any:
            self.calls.append(f"{namespace}/{name}")
            return client.V1ConfigMap(data={"K": "v"})

        def __getattr__(self, attribute: str) -> Any:
            raise AssertionError(f"unexpected API call {attribute}")

    api = OnlyConfigMaps()
    keys = await ConfigMapReader(api).configmap_keys(NAMESPACE, ["a"], timeout=1)
    assert keys == {"a": frozenset({"K"})}
    assert api.calls == [f"{NAMESPACE}/a"]


def test_in_cluster_outside_a_cluster_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(config.ConfigException):
        ConfigMapReader.in_cluster()


def test_a_kubeconfig_replaces_the_in_cluster_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONCURRENCY_INJECTOR_KUBECONFIG: a process outside a cluster uses that file's credentials."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: the-token}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    reader = ConfigMapReader.in_cluster(str(kubeconfig))
    configuration = reader._api.api_client.configuration  # type: ignore[attr-defined]
    assert configuration.host == "https://127.0.0.1:6443"
    assert configuration.api_key == {"BearerToken": "Bearer the-token"}
    settings = Settings(read_configmaps=True, kubeconfig=str(kubeconfig))
    assert in_cluster_problem(settings) is None
    missing = Settings(read_configmaps=True, kubeconfig=str(tmp_path / "absent"))
    problem = in_cluster_problem(missing)
    assert problem is not None
    assert problem.startswith(
        f"CONCURRENCY_INJECTOR_READ_CONFIGMAPS=true: CONCURRENCY_INJECTOR_KUBECONFIG={tmp_path}/absent: "
    )

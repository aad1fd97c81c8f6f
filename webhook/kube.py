"""Kubernetes API access at the edge: the in-cluster client and the envFrom ConfigMap reader.

The official client is synchronous, so every call runs in a thread, off the event loop, with
a per-call timeout; the review's time budget bounds the wait for all of them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from webhook import logs

# How long a ConfigMap's keys are reused: pods of one rollout arrive together and name the same
# ConfigMaps, and a key added since is picked up within this long.
CACHE_TTL = 30.0
# Entries kept at most; expired ones are dropped first when it is full.
CACHE_MAX_ENTRIES = 4096
HTTP_NOT_FOUND = 404

log = logs.get("kube")


class ConfigMapsApi(Protocol):
    """The one call made on `kubernetes.client.CoreV1Api`: ConfigMaps only, never Secrets."""

    def read_namespaced_config_map(
        self, name: str, namespace: str, *, _request_timeout: float
    ) -> Any: ...


def api_client(kubeconfig: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: the pod's service account, or a kubeconfig file.

    In a cluster `kubeconfig` is None and the in-cluster config is used (the token file is
    re-read as the kubelet rotates it). Outside a cluster (CONCURRENCY_INJECTOR_KUBECONFIG),
    the file's current context is used, so a process on a host can run with a ServiceAccount
    token and be held to the same RBAC as the pod.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def _keys(config_map: Any) -> frozenset[str]:
    # envFrom exports the keys of both data and binaryData.
    data = getattr(config_map, "data", None) or {}
    binary = getattr(config_map, "binary_data", None) or {}
    return frozenset(data) | frozenset(binary)


class ConfigMapReader:
    """Reads the keys of ConfigMaps (an `EnvSourceReader`), with a short TTL cache.

    A ConfigMap that does not exist defines no keys (cached like any other answer). A
    ConfigMap that could not be read in time or was refused is left out of the result, so its
    keys are unknown and the caller decides (fail-open); such failures are not cached.
    """

    def __init__(
        self,
        api: ConfigMapsApi,
        *,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def in_cluster(cls, kubeconfig: str | None = None) -> ConfigMapReader:
        """A reader with the pod's service account (or the kubeconfig's credentials)."""
        from kubernetes import client

        return cls(client.CoreV1Api(api_client(kubeconfig)))

    def _cached(self, namespace: str, name: str) -> frozenset[str] | None:
        with self._lock:
            hit = self._cache.get((namespace, name))
        if hit is None or hit[0] <= self._clock():
            return None
        return hit[1]

    def _store(self, namespace: str, name: str, *, keys: frozenset[str]) -> None:
        now = self._clock()
        with self._lock:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[(namespace, name)] = (now + self._ttl, keys)

    def _read(self, namespace: str, name: str, *, timeout: float) -> frozenset[str] | None:
        """Blocking read of one ConfigMap; None when its keys stay unknown."""
        from kubernetes.client.exceptions import ApiException

        try:
            config_map = self._api.read_namespaced_config_map(
                name, namespace, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status != HTTP_NOT_FOUND:
                log.warning("ConfigMap %s/%s not readable: HTTP %s", namespace, name, exc.status)
                return None
            keys: frozenset[str] = frozenset()
        except Exception as exc:  # timeouts and connection errors: unknown, not fatal
            log.warning("ConfigMap %s/%s not readable: %s", namespace, name, exc)
            return None
        else:
            keys = _keys(config_map)
        # Stored even when the caller stopped waiting, so the next review finds it.
        self._store(namespace, name, keys=keys)
        return keys

    async def configmap_keys(
        self, namespace: str, names: list[str], *, timeout: float
    ) -> dict[str, frozenset[str]]:
        """Per ConfigMap name, the keys it defines; names not read within `timeout` are left out.

        A review without a namespace names no ConfigMap this reader could find: none is read.
        """
        result: dict[str, frozenset[str]] = {}
        if not namespace:
            return result
        missing: list[str] = []
        for name in dict.fromkeys(names):
            cached = self._cached(namespace, name)
            if cached is None:
                missing.append(name)
            else:
                result[name] = cached
        if not missing or timeout <= 0:
            return result
        tasks = {
            name: asyncio.create_task(
                asyncio.to_thread(self._read, namespace, name, timeout=timeout)
            )
            for name in missing
        }
        done, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        for task in pending:
            # The thread finishes on its own (its call has the same timeout) and fills the cache.
            task.cancel()
        for name, task in tasks.items():
            if task in done and task.exception() is None:
                keys = task.result()
                if keys is not None:
                    result[name] = keys
        return result

"""Reading a cluster for `survey` and `explain`: paged lists as plain JSON, read-only. I/O.

Lists go page by page (`limit`/`continue`), each page decoded to plain dicts and handed on
before the next is read, so memory is bounded by a page, not by the cluster. Nothing here
writes; Secrets are never read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from webhook import logs
from webhook.core.types import Obj

PAGE_SIZE = 500
REQUEST_TIMEOUT = 30.0
HTTP_FORBIDDEN = 403
HTTP_NOT_FOUND = 404


class Unreachable(RuntimeError):
    """The cluster cannot be reached or its credentials cannot be loaded (exit 3)."""


class Forbidden(RuntimeError):
    """The identity may not list this resource here (HTTP 403)."""


# (API object, its method for all namespaces, its method for one namespace) per resource.
RESOURCES: dict[str, tuple[str, str, str]] = {
    "pods": ("CoreV1Api", "list_pod_for_all_namespaces", "list_namespaced_pod"),
    "configmaps": ("CoreV1Api", "list_config_map_for_all_namespaces", "list_namespaced_config_map"),
    "deployments": (
        "AppsV1Api",
        "list_deployment_for_all_namespaces",
        "list_namespaced_deployment",
    ),
    "statefulsets": (
        "AppsV1Api",
        "list_stateful_set_for_all_namespaces",
        "list_namespaced_stateful_set",
    ),
    "daemonsets": ("AppsV1Api", "list_daemon_set_for_all_namespaces", "list_namespaced_daemon_set"),
    "replicasets": (
        "AppsV1Api",
        "list_replica_set_for_all_namespaces",
        "list_namespaced_replica_set",
    ),
    "jobs": ("BatchV1Api", "list_job_for_all_namespaces", "list_namespaced_job"),
    "cronjobs": ("BatchV1Api", "list_cron_job_for_all_namespaces", "list_namespaced_cron_job"),
}


def connect(kubeconfig: str | None, context: str | None) -> Any:
    """A `kubernetes.client.ApiClient` from a kubeconfig (and context), else in-cluster."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except Exception as exc:
        if kubeconfig or context:
            raise Unreachable(f"cannot load kubeconfig {kubeconfig or ''}: {exc}") from None
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except Exception:
            raise Unreachable(f"no kubeconfig and not in a cluster: {exc}") from None
    return client.ApiClient(configuration)


@dataclass
class Cluster:
    """Paged, read-only lists and reads on one API server."""

    api_client: Any
    page_size: int = PAGE_SIZE
    progress: Progress | None = None

    def _api(self, name: str) -> Any:
        from kubernetes import client

        return getattr(client, name)(self.api_client)

    def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        from kubernetes.client.exceptions import ApiException

        try:
            response = call(
                *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )
        except ApiException as exc:
            if exc.status == HTTP_FORBIDDEN:
                raise Forbidden(exc.reason or "forbidden") from None
            if exc.status == HTTP_NOT_FOUND:
                raise
            # e.g. 410 Gone: a list's continue token expired on a very large cluster
            raise Unreachable(f"the API server answered HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # connection refused, DNS, TLS, timeouts
            raise Unreachable(f"cannot reach the cluster: {logs.brief(exc)}") from None
        value = orjson.loads(response.data)
        return value if isinstance(value, dict) else {}

    def pages(self, resource: str, namespace: str | None = None) -> Iterator[list[Obj]]:
        """Every object of `resource` (in `namespace`, or all), one page at a time."""
        api_name, everywhere, one = RESOURCES[resource]
        api = self._api(api_name)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size}
            if token:
                kwargs["_continue"] = token
            if namespace is None:
                page = self._call(getattr(api, everywhere), **kwargs)
            else:
                page = self._call(getattr(api, one), namespace, **kwargs)
            items = page.get("items") or []
            if self.progress is not None:
                self.progress.advance(resource, len(items))
            yield items
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def items(self, resource: str, namespace: str | None = None) -> Iterator[Obj]:
        for page in self.pages(resource, namespace):
            yield from page

    def nodes(self) -> Iterator[Obj]:
        api = self._api("CoreV1Api")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size}
            if token:
                kwargs["_continue"] = token
            page = self._call(api.list_node, **kwargs)
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def namespaces(self) -> list[str]:
        api = self._api("CoreV1Api")
        page = self._call(api.list_namespace)
        return [str((n.get("metadata") or {}).get("name")) for n in page.get("items") or []]

    def pod(self, namespace: str, name: str) -> Obj:
        """One pod; InputError (exit 2) when there is no such pod."""
        from kubernetes.client.exceptions import ApiException

        from webhook.workloads import InputError

        try:
            return self._call(self._api("CoreV1Api").read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                raise InputError(f"Pod {namespace}/{name} not found") from None
            raise

    def config_map(self, namespace: str, name: str) -> Obj | None:
        """One ConfigMap, None when it does not exist; Forbidden when it may not be read."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self._api("CoreV1Api").read_namespaced_config_map, name, namespace)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise


class Progress:
    """Objects read so far, on one line of stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.counts: dict[str, int] = {}

    @classmethod
    def if_terminal(cls, stream: TextIO = sys.stderr) -> Progress | None:
        return cls(stream) if stream.isatty() else None

    def advance(self, resource: str, count: int) -> None:
        self.counts[resource] = self.counts.get(resource, 0) + count
        shown = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        self.stream.write(f"\rreading: {shown}")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()

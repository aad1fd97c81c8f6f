"""Builds the edge components (registry, Kubernetes API readers) that settings ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webhook.admission.types import EnvSourceReader
from webhook.config import Settings

if TYPE_CHECKING:
    from webhook.registry.resolver import RegistryResolver


def resolver(settings: Settings) -> RegistryResolver | None:
    """The registry client, or None when registry lookups are off."""
    if settings.no_registry:
        return None
    from webhook.registry.resolver import RegistryResolver

    return RegistryResolver(
        insecure_registries=settings.insecure_registry,
        platform=settings.platform,
        docker_config=settings.docker_config,
        ca_file=settings.registry_ca_file,
    )


def in_cluster_problem(settings: Settings) -> str | None:
    """Why the in-cluster features asked for cannot start here, or None.

    Checked once before serving, so a webhook started outside a cluster (or without its service
    account) says what is wrong instead of failing in every worker.
    """
    needs = [
        name
        for name, on in (
            ("READ_CONFIGMAPS", settings.read_configmaps),
            ("TLS_SELF_MANAGED", settings.tls_self_managed),
        )
        if on
    ]
    if not needs:
        return None
    from kubernetes.config import ConfigException

    from webhook.kube import api_client

    try:
        api_client(settings.kubeconfig)
    except ConfigException as exc:
        wanted = ", ".join(f"CONCURRENCY_INJECTOR_{n}=true" for n in needs)
        if settings.kubeconfig:
            return f"{wanted}: CONCURRENCY_INJECTOR_KUBECONFIG={settings.kubeconfig}: {exc}"
        return f"{wanted} needs the in-cluster service account: {exc}"
    return None


def env_reader(settings: Settings) -> EnvSourceReader | None:
    """The in-cluster ConfigMap reader for the envFrom check, or None when it is off."""
    if not settings.read_configmaps:
        return None
    from webhook.kube import ConfigMapReader

    return ConfigMapReader.in_cluster(settings.kubeconfig)

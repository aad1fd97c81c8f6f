"""Builds the edge components (registry, Kubernetes API readers) that settings ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webhook.config import Settings
from webhook.types import EnvSourceReader

if TYPE_CHECKING:
    from webhook.registry import RegistryResolver


def resolver(settings: Settings) -> RegistryResolver | None:
    """The registry client, or None when registry lookups are off."""
    if settings.no_registry:
        return None
    from webhook.registry import RegistryResolver

    return RegistryResolver(
        insecure_registries=settings.insecure_registry,
        platform=settings.platform,
        docker_config=settings.docker_config,
        ca_file=settings.registry_ca_file,
    )


def env_reader(settings: Settings) -> EnvSourceReader | None:
    """The in-cluster ConfigMap reader for the envFrom check, or None when it is off."""
    if not settings.read_configmaps:
        return None
    from webhook.kube import ConfigMapReader

    return ConfigMapReader.in_cluster()

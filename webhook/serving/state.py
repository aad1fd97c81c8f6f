"""What a serving worker knows about itself, as one object the app is built with.

Its certificate sources (each says whether it is serving), where it is in its shutdown, and the
bounds its connections are held to. /readyz asks this object; the connection protocol reads its
bounds and shutdown from the app it serves. Model: cert-manager's `CertificateSource.Healthy()`.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Protocol

from webhook.config import Settings

# File descriptors kept for everything but client connections (registry and API clients, files).
RESERVED_FDS = 64


class CertificateSource(Protocol):
    """Where the serving certificate comes from (webhook/serving/tls.py)."""

    def healthy(self) -> bool:
        """Whether a certificate is loaded and served."""
        ...

    def reload_if_changed(self) -> bool:
        """Load a renewed certificate; True when a new one is in use."""
        ...


@dataclass
class Shutdown:
    """Where this worker process is in its shutdown (webhook/serving/shutdown.py)."""

    draining: bool = False  # SIGTERM seen: not ready, close connections after each response
    stopping: bool = False  # the drain is over: uvicorn is stopping, new connections are closed


@dataclass(frozen=True)
class Bounds:
    """Per-connection limits, from the settings of the same names."""

    max_connections: int = Settings.max_connections
    first_request_seconds: float = Settings.first_request_seconds
    request_read_seconds: float = Settings.request_read_seconds
    max_header_bytes: int = Settings.max_header_bytes
    max_headers: int = Settings.max_headers

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        """The settings, with the connection cap kept inside the process's file limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_room = (
            soft - RESERVED_FDS if soft != resource.RLIM_INFINITY else settings.max_connections
        )
        return cls(
            max_connections=max(1, min(settings.max_connections, fd_room)),
            first_request_seconds=settings.first_request_seconds,
            request_read_seconds=settings.request_read_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        )


@dataclass
class ServingState:
    """One worker's serving state: certificates, shutdown and connection bounds."""

    certificates: list[CertificateSource] = field(default_factory=list)
    shutdown: Shutdown = field(default_factory=Shutdown)
    bounds: Bounds = field(default_factory=Bounds)

    def readiness(self) -> tuple[str, bool]:
        """What /readyz says: draining on SIGTERM, starting until every certificate serves."""
        if self.shutdown.draining:  # the Service stops sending reviews here
            return "draining", False
        if not all(source.healthy() for source in self.certificates):
            return "starting", False
        return "ready", True

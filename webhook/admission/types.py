"""Typed shapes of the wire format (AdmissionReview v1) and of the lookups a review may make."""

from __future__ import annotations

from typing import Literal, NotRequired, Protocol, TypedDict

from webhook.core.types import ImageConfig, Obj


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    namespace: NotRequired[str]
    name: NotRequired[str]
    subResource: NotRequired[str]
    object: NotRequired[Obj | None]
    oldObject: NotRequired[Obj | None]
    dryRun: NotRequired[bool]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]
    auditAnnotations: NotRequired[dict[str, str]]


class ImageResolver(Protocol):
    """Reads image configs from registries, at the edge of the pure core.

    `resolve` returns what it could read within `timeout` seconds, keyed by the image reference
    exactly as the pod spells it; a reference missing from the result is unknown (fail-open).
    """

    async def resolve(self, images: list[str], *, timeout: float) -> dict[str, ImageConfig]: ...


class EnvSourceReader(Protocol):
    """Reads the keys of ConfigMaps a container's envFrom names (never Secrets).

    `configmap_keys` returns, per ConfigMap name in `namespace`, the set of keys it defines;
    a name missing from the result could not be read, so its keys are unknown.
    """

    async def configmap_keys(
        self, namespace: str, names: list[str], *, timeout: float
    ) -> dict[str, frozenset[str]]: ...

"""The shapes the core works on: Kubernetes objects as plain JSON data, and image metadata."""

from __future__ import annotations

from typing import Any, TypedDict

# A Kubernetes object as plain JSON data. Pods are handled as dicts end to end so that
# every field the webhook does not know about passes through untouched.
Obj = dict[str, Any]


class ImageConfig(TypedDict):
    """The parts of an OCI image config that detection reads (config.Labels/Entrypoint/Cmd/Env)."""

    labels: dict[str, str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    env: list[str]

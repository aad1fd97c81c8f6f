"""The one admission handler: an AdmissionReview in, the whole answer out.

Decode, checks and work caps, lookups (registry, ConfigMaps) inside one time budget, the
decision (webhook/core), the patch, and the record (metrics and the log line): every caller
goes through `AdmissionHandler.handle`, so the server, `mutate` and the benchmark cannot
disagree. The HTTP layer only moves bytes around it and maps `ReviewError` to a 4xx.

Two kinds of error: `ReviewError` is the caller's fault and is raised to the caller; anything
else raised while deciding is ours and fails open (allowed unpatched, a warning, a log line and
an error metric), by decision: never block pod creation on our bug (`failurePolicy: Ignore`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from webhook import logs, metrics
from webhook.admission.cache import DecisionCache, decision_key, pod_key
from webhook.admission.caps import OverLimit, over_limit
from webhook.admission.review import (
    allow,
    check_pod,
    check_review,
    fail_open,
    is_pod_create,
    is_pod_resize,
    parse_review,
    respond,
    review_of,
)
from webhook.admission.types import (
    AdmissionResponse,
    AdmissionReview,
    EnvSourceReader,
    ImageResolver,
)
from webhook.config import Settings
from webhook.core.decision import Decision, configmaps_to_read, decide
from webhook.core.detection import images_to_resolve
from webhook.core.findings import kind_of
from webhook.core.resize import Stale, recorded_status, stale_counts
from webhook.core.types import ImageConfig, Obj
from webhook.lru import LRU

log = logs.get("admission")


@dataclass(frozen=True)
class Answer:
    """The whole answer to one review: the response, and what led to it."""

    response: AdmissionResponse
    outcome: str  # patched, annotated, unchanged, audit, ignored or error (the requests metric)
    decision: Decision | None = None  # None when nothing was decided (ignored, capped, error)
    over_limit: OverLimit | None = None

    @property
    def patch(self) -> list[Obj]:
        """The JSON Patch the response carries (empty when it carries none)."""
        return self.decision.patch if self.decision is not None else []

    @property
    def warnings(self) -> list[str]:
        return list(self.response.get("warnings") or [])

    def review(self) -> dict[str, Any]:
        """The response as the AdmissionReview the API server reads."""
        return review_of(self.response)


class AdmissionHandler:
    """Answers AdmissionReviews; built once per process with the lookups it may make.

    `record` counts every answer in the metrics and logs one line per decided pod, as the
    server does; the command line turns it off and prints the answer instead.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: ImageResolver | None = None,
        env_reader: EnvSourceReader | None = None,
        record: bool = True,
    ) -> None:
        self.settings = settings
        self.options = settings.options
        self.resolver = resolver
        self.env_reader = env_reader
        self.record = record
        self.cache = DecisionCache(settings.decision_cache_size)
        self._lookups_of: LRU[bytes, tuple[list[str], list[str]]] = LRU(
            settings.decision_cache_size
        )

    @property
    def makes_lookups(self) -> bool:
        """Whether answers may wait on a registry or the Kubernetes API."""
        return self.resolver is not None or self.env_reader is not None

    async def handle_body(self, body: bytes, *, budget: float | None = None) -> Answer:
        """A review as the API server sends it; ReviewError when it is not a usable one."""
        return await self._answer(parse_review(body), budget)

    async def handle(self, review: Any, *, budget: float | None = None) -> Answer:
        """Answer one review within `budget` seconds of lookups (default: the registry timeout).

        ReviewError (the caller's fault) is raised; our own failures fail open.
        """
        return await self._answer(check_review(review), budget)

    async def _answer(self, checked: AdmissionReview, budget: float | None) -> Answer:
        request = checked["request"]
        uid = request["uid"]
        if is_pod_resize(checked):
            return self._resize(uid, request.get("object") or {}, request.get("namespace") or "")
        if not is_pod_create(checked):
            return Answer({"uid": uid, "allowed": True}, "ignored")
        pod: Obj = request.get("object") or {}
        too_big = over_limit(pod, self.settings)
        if too_big is not None:  # fail open, by decision (see webhook/admission/caps.py)
            if self.record:
                metrics.child(metrics.OVER_LIMIT, too_big.limit).inc()
                log.warning(
                    "pod over a work limit; admitted unchanged",
                    extra={"limit": too_big.limit, "count": too_big.count, "cap": too_big.cap},
                )
            return Answer(allow(uid, warnings=[too_big.warning]), "unchanged", over_limit=too_big)
        key = pod_key(pod)
        if not self.cache.checked(key):  # a pod seen before was checked then
            check_pod(pod)
            self.cache.mark_checked(key)
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
        try:
            images: dict[str, ImageConfig] = {}
            configmaps: dict[str, frozenset[str]] = {}
            if self.makes_lookups:  # else no coroutine: a new pod is answered in one step
                wait = self.settings.registry_timeout if budget is None else budget
                images, configmaps = await self._lookups(pod, key, namespace, wait)
            decision = self.cache.get_or_decide(
                key and decision_key(key, images, configmaps),
                lambda: decide(pod, self.options, images=images, configmaps=configmaps),
            )
            response = respond(uid, decision)
        except Exception:
            # Fail open, by decision: never block pod creation on our bug (failurePolicy: Ignore).
            metrics.ERRORS.labels("mutate").inc()
            log.exception(
                "mutation failed; pod admitted unchanged", extra={"pod": _pod_name(pod, namespace)}
            )
            return Answer(fail_open(uid), "error")
        if self.record:
            _record(decision, _pod_name(pod, namespace))
        return Answer(response, decision.outcome, decision)

    def _resize(self, uid: str, pod: Obj, namespace: str) -> Answer:
        """An in-place resize: allowed, never patched; a warning per container whose recorded
        worker count the new limits no longer give (env cannot change without a new pod)."""
        try:
            if not recorded_status(pod):
                return Answer({"uid": uid, "allowed": True}, "ignored")  # not a pod we patched
            stale = stale_counts(pod, self.options)
        except Exception:
            # Fail open, by decision, as for a create: a resize is never blocked on our bug.
            metrics.ERRORS.labels("resize").inc()
            log.exception("resize review failed; allowed", extra={"pod": _pod_name(pod, namespace)})
            return Answer(fail_open(uid), "error")
        warnings = [s.warning for s in stale]
        if self.record and stale:
            _record_stale(stale, _pod_name(pod, namespace))
        return Answer(allow(uid, warnings=warnings), "unchanged")

    def handle_now(self, review: Any) -> Answer:
        """`handle` without an event loop, for callers that make no lookups (a sync server).

        With no resolver and no ConfigMap reader nothing in `handle` waits, so the coroutine
        finishes on its first step.
        """
        if self.makes_lookups:
            raise RuntimeError("handle_now makes no lookups; use handle")
        return _finish(self.handle(review))

    async def aclose(self) -> None:
        close = getattr(self.resolver, "aclose", None)
        if close is not None:
            await close()

    async def _lookups(
        self, pod: Obj, key: bytes | None, namespace: str, budget: float
    ) -> tuple[dict[str, ImageConfig], dict[str, frozenset[str]]]:
        """Registry and ConfigMap reads, in parallel, inside one time budget per review."""
        refs, names = self._wanted(pod, key)
        if not refs and not names:
            return {}, {}
        if not names and self.resolver is not None:
            # Every image answered by the registry cache: no coroutine, no task, no loop turn.
            cached = getattr(self.resolver, "resolve_cached", None)
            found = cached(refs) if cached is not None else None
            if found is not None:
                return found, {}

        async def images() -> dict[str, ImageConfig]:
            if not refs or self.resolver is None:
                return {}
            return await self.resolver.resolve(refs, timeout=budget)

        async def configmaps() -> dict[str, frozenset[str]]:
            if not names or self.env_reader is None:
                return {}
            return await self.env_reader.configmap_keys(namespace, names, timeout=budget)

        found_all = await asyncio.gather(images(), configmaps(), return_exceptions=True)
        results: list[Any] = []
        for stage, value in zip(("registry", "configmaps"), found_all, strict=True):
            if isinstance(value, BaseException):
                metrics.ERRORS.labels(stage).inc()
                log.warning(
                    f"{stage} lookup failed; deciding without it", extra={"error": repr(value)}
                )
                value = {}
            results.append(value)
        return results[0], results[1]

    def _wanted(self, pod: Obj, key: bytes | None) -> tuple[list[str], list[str]]:
        """The images and ConfigMaps a pod needs read, found once per pod key (a Deployment's
        replicas ask for the same ones)."""
        wanted = self._lookups_of.get(key) if key else None
        if wanted is None:
            wanted = (
                images_to_resolve(pod, self.options.profiles) if self.resolver is not None else [],
                configmaps_to_read(pod) if self.env_reader is not None else [],
            )
            if key:
                self._lookups_of.put(key, wanted)
        return wanted


def _finish(coroutine: Coroutine[Any, Any, Answer]) -> Answer:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the handler waited on a lookup")


def _pod_name(pod: Obj, namespace: str) -> str:
    """namespace/name for the log line; a checked pod's names are strings (or absent)."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}*"
    return f"{namespace}/{name}"


def _record(decision: Decision, pod: str) -> None:
    """Metrics and the one log line per decided pod."""
    for c in decision.containers:
        if c.set:
            metrics.child(
                metrics.INJECTIONS, c.runtime, c.source, "audit" if decision.audit else "enforce"
            ).inc()
        elif c.skip_reason:
            metrics.child(metrics.SKIPS, f"container-{c.skip_reason}").inc()
    if decision.reason:
        metrics.child(metrics.SKIPS, decision.reason).inc()
    for warning in decision.warnings:
        metrics.child(metrics.WARNINGS, kind_of(warning)).inc()
    if decision.containers or decision.warnings:
        message = "pod mutated" if decision.outcome == "patched" else "pod reviewed"
        logs.info_json(log, message, {"pod": pod}, decision.summary_json)


def _record_stale(stale: list[Stale], pod: str) -> None:
    """Metrics and one log line for a resize that leaves worker counts stale."""
    for s in stale:
        metrics.child(metrics.RESIZE_STALE, s.runtime).inc()
        metrics.child(metrics.WARNINGS, kind_of(s.warning)).inc()
    log.warning(
        "resize leaves a worker count stale until the pod is recreated",
        extra={
            "pod": pod,
            "containers": {s.container: {s.variable: [s.kept, s.wanted]} for s in stale},
        },
    )


def mutate_review(review: Any, settings: Settings) -> dict[str, Any]:
    """A whole review to a whole response review, with no lookups and no record.

    ReviewError when the review is not a usable one. For tests and tools that hold one review.
    """
    return AdmissionHandler(settings, record=False).handle_now(review).review()

"""Reads image configs from OCI registries, at the edge of the pure core.

tag or digest -> manifest -> (index: the configured platform's manifest) -> config blob ->
Labels, Env, Entrypoint, Cmd. The API server waits on every admission, so lookups run in
parallel under one time budget, are cached (by digest for good, by tag for a TTL, failures
briefly) and shared: concurrent admissions for one image cost the registry one lookup.

Fail-open, by decision: a lookup that fails or runs out of time is left out of the result and
detection decides from the rest; `resolve` never raises for a lookup failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from webhook import logs, metrics
from webhook.core.types import ImageConfig
from webhook.lru import LRU
from webhook.registry.auth import CredentialStore
from webhook.registry.fetch import Fetched, LookupFailed, Platform, RegistryClient
from webhook.registry.imageref import ImageRef, InvalidReference, parse

log = logs.get("registry")

# A lookup that outlives its caller's budget keeps filling the cache, but never past this.
BACKGROUND_BUDGET = 10.0
# The outer guard on a lookup fires this long after its own HTTP timeouts would have: cancelling
# a TLS handshake mid-way leaks its socket (httpcore closes on errors, not on cancellation).
CANCEL_GRACE = 1.0
# At most this many distinct images are looked up at once; more are left out (fail-open).
MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class _Failure:
    """A lookup that produced no config, and why (a metrics outcome)."""

    outcome: str


_Result = ImageConfig | _Failure


@functools.lru_cache(maxsize=1024)
def _parsed(image: str) -> ImageRef | None:
    """`parse` of a pod's image string, remembered (the same images come again and again)."""
    try:
        return parse(image)
    except InvalidReference as exc:
        log.debug("registry: %s", exc)
        return None


@functools.lru_cache(maxsize=64)
def _lookups(outcome: str) -> Any:
    """The metrics.REGISTRY_LOOKUPS child of an outcome, looked up once."""
    return metrics.REGISTRY_LOOKUPS.labels(outcome)


def _copy(config: ImageConfig) -> ImageConfig:
    """A copy a caller may change without touching the cache."""
    return ImageConfig(
        labels=dict(config["labels"]),
        entrypoint=None if config["entrypoint"] is None else list(config["entrypoint"]),
        cmd=None if config["cmd"] is None else list(config["cmd"]),
        env=list(config["env"]),
    )


def _cache_key(ref: ImageRef) -> str:
    return f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"


class RegistryResolver:
    """Resolves image references to their configs, cached and de-duplicated (an ImageResolver)."""

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        platform: str = "linux/amd64",
        docker_config: str | None = None,
        ca_file: str | None = None,
        tag_ttl: float = 300.0,
        failure_ttl: float = 30.0,
        max_entries: int = 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = RegistryClient(
            insecure_registries=insecure_registries,
            platform=Platform.parse(platform),
            credentials=CredentialStore(docker_config),
            ca_file=ca_file,
            transport=transport,
        )
        self._tag_ttl = tag_ttl
        self._failure_ttl = failure_ttl
        # config digest -> config: content-addressed, so good for as long as it is kept.
        self._configs: LRU[str, ImageConfig] = LRU(max_entries)
        # name@manifest-digest -> config digest, for good; name:tag -> (expiry, config digest).
        self._pinned: LRU[str, str] = LRU(max_entries)
        self._tags: LRU[str, tuple[float, str]] = LRU(max_entries)
        self._failures: LRU[str, tuple[float, _Failure]] = LRU(max_entries)
        self._in_flight: dict[str, asyncio.Task[_Result]] = {}

    def resolve_cached(self, images: list[str]) -> dict[str, ImageConfig] | None:
        """What `resolve` would return when the cache decides every image (a config or a
        recent failure), without a coroutine or a task; None when any needs a lookup.

        Most reviews name images seen moments ago (a Deployment's replicas, the same base
        images): this keeps them as cheap as a review with registry lookups off.
        """
        found: dict[str, ImageConfig] = {}
        outcomes: list[str] = []
        for image in dict.fromkeys(images):
            ref = _parsed(image)
            if ref is None:
                outcomes.append("invalid")
                continue
            cached = self._cached(ref)
            if cached is None:
                return None
            if isinstance(cached, _Failure):
                outcomes.append(cached.outcome)
            else:
                outcomes.append("hit")
                found[image] = _copy(cached)
        for outcome in outcomes:
            _lookups(outcome).inc()
            if outcome == "hit":
                metrics.REGISTRY_CACHE_HITS.inc()
        return found

    async def resolve(self, images: list[str], *, timeout: float) -> dict[str, ImageConfig]:
        """Configs of `images` read within `timeout` seconds, keyed as the pod spells them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        found: dict[str, ImageConfig] = {}
        waiting: dict[str, asyncio.Task[_Result]] = {}
        for image in dict.fromkeys(images):
            try:
                ref = parse(image)
            except InvalidReference as exc:
                log.debug("registry: %s", exc)
                metrics.REGISTRY_LOOKUPS.labels("invalid").inc()
                continue
            cached = self._cached(ref)
            if isinstance(cached, _Failure):
                metrics.REGISTRY_LOOKUPS.labels(cached.outcome).inc()
            elif cached is not None:
                metrics.REGISTRY_LOOKUPS.labels("hit").inc()
                metrics.REGISTRY_CACHE_HITS.inc()
                found[image] = _copy(cached)
            elif (task := self._lookup_task(ref)) is not None:
                waiting[image] = task
            else:
                log.warning("registry: %d lookups in flight, skipping %s", MAX_IN_FLIGHT, image)
                metrics.REGISTRY_LOOKUPS.labels("overloaded").inc()
        if waiting:
            # asyncio.wait never cancels: a lookup past the deadline goes on to fill the cache.
            await asyncio.wait(set(waiting.values()), timeout=max(0.0, deadline - loop.time()))
        for image, task in waiting.items():
            done = task.done() and not task.cancelled()
            result = task.result() if done else _Failure("timeout")
            if isinstance(result, _Failure):
                metrics.REGISTRY_LOOKUPS.labels(result.outcome).inc()
            else:
                metrics.REGISTRY_LOOKUPS.labels("miss_ok").inc()
                found[image] = _copy(result)
        return found

    async def aclose(self) -> None:
        """Stop lookups still running and close connections.

        Lookups get a short grace to end on their own HTTP timeouts before they are cancelled.
        """
        tasks = list(self._in_flight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _cached(self, ref: ImageRef) -> _Result | None:
        """What the cache knows of `ref`: a config, a recent failure, or None."""
        key, now = _cache_key(ref), time.monotonic()
        failure = self._failures.get(key)
        if failure is not None:
            if failure[0] > now:
                return failure[1]
            self._failures.pop(key)
        if ref.digest:
            config_digest = self._pinned.get(key)
        else:
            entry = self._tags.get(key)
            config_digest = entry[1] if entry is not None and entry[0] > now else None
        return self._configs.get(config_digest) if config_digest else None

    def _lookup_task(self, ref: ImageRef) -> asyncio.Task[_Result] | None:
        """The running lookup for `ref`, started if there is none (single-flight)."""
        key = _cache_key(ref)
        task = self._in_flight.get(key)
        if task is None and len(self._in_flight) < MAX_IN_FLIGHT:
            task = asyncio.create_task(self._lookup(ref, key), name=f"registry:{key}")
            self._in_flight[key] = task
        return task

    async def _lookup(self, ref: ImageRef, key: str) -> _Result:
        """One registry round trip for `ref`, stored in the cache; never raises."""
        started = time.monotonic()
        # A tag seen before whose TTL ran out: a HEAD may show it still names the same manifest.
        revalidate = ref.digest is None and self._tags.get(key) is not None
        try:
            async with asyncio.timeout(BACKGROUND_BUDGET + CANCEL_GRACE):
                fetched = await self._client.fetch(
                    ref,
                    deadline=started + BACKGROUND_BUDGET,
                    known=self._configs.get,
                    pinned=lambda digest: self._pinned.get(f"{ref.name}@{digest}"),
                    revalidate=revalidate,
                )
            return self._store(ref, key, fetched)
        except LookupFailed as exc:
            log.log(
                logging.WARNING if exc.outcome == "error" else logging.DEBUG,
                "registry: %s: %s",
                ref,
                exc,
            )
            return self._fail(key, exc.outcome)
        except (TimeoutError, httpx.TimeoutException):
            log.info("registry: %s: no answer within %.0f s", ref, BACKGROUND_BUDGET)
            return self._fail(key, "timeout")
        except httpx.HTTPError as exc:
            log.warning("registry: %s: %s: %s", ref, type(exc).__name__, exc)
            return self._fail(key, "error")
        except Exception:
            # Fail-open: an unexpected failure must not reach an admission.
            log.warning("registry: unexpected failure looking up %s", ref, exc_info=True)
            return self._fail(key, "error")
        finally:
            metrics.REGISTRY_LOOKUP_SECONDS.observe(time.monotonic() - started)
            self._in_flight.pop(key, None)

    def _store(self, ref: ImageRef, key: str, fetched: Fetched) -> ImageConfig:
        """Cache a config by its digest, and the manifest and tag that lead to it."""
        self._configs.put(fetched.config_digest, fetched.config)
        self._pinned.put(f"{ref.name}@{fetched.manifest_digest}", fetched.config_digest)
        if not ref.digest:
            self._tags.put(key, (time.monotonic() + self._tag_ttl, fetched.config_digest))
        self._failures.pop(key)
        return fetched.config

    def _fail(self, key: str, outcome: str) -> _Failure:
        """Cache a failure briefly, so a broken image does not cost a round trip per admission."""
        failure = _Failure(outcome)
        self._failures.put(key, (time.monotonic() + self._failure_ttl, failure))
        return failure

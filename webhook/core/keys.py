"""The names users and the chart rely on: label and annotation keys, env names (SPEC "Names")."""

from typing import Final

PREFIX: Final = "concurrency-injector.io/"

ENABLED_LABEL: Final = PREFIX + "enabled"
INJECT: Final = PREFIX + "inject"
CONTAINERS: Final = PREFIX + "containers"
RUNTIME: Final = PREFIX + "runtime"
WORKERS_PER_CPU: Final = PREFIX + "workers-per-cpu"
MIN_WORKERS: Final = PREFIX + "min-workers"
MAX_WORKERS: Final = PREFIX + "max-workers"
MEMORY_PER_WORKER: Final = PREFIX + "memory-per-worker"
OVERRIDE: Final = PREFIX + "override"
MODE: Final = PREFIX + "mode"
MULTI_WORKER: Final = PREFIX + "multi-worker"
STATUS: Final = PREFIX + "status"
# Written by the native policy: the containers it decided (webhook/native/cel.py).
NATIVE: Final = PREFIX + "native"

DEFAULT_CONTAINER: Final = "kubectl.kubernetes.io/default-container"

IMAGE_RUNTIME_LABEL: Final = "io.concurrency-injector.runtime"

WEB_CONCURRENCY: Final = "WEB_CONCURRENCY"
CPU_LIMIT: Final = "CPU_LIMIT"
PYTHON_CPU_COUNT: Final = "PYTHON_CPU_COUNT"
# Facts about the container, set whatever runtime it runs (and despite an unread envFrom).
FACTS: Final = (CPU_LIMIT, PYTHON_CPU_COUNT)

ENV_PREFIX: Final = "CONCURRENCY_INJECTOR_"

"""`mutate`: Pods and workloads from a file, through the webhook's own handler, offline.

Documents are read, decided and written one at a time (webhook/documents.py), so memory follows
the largest document, not the stream. The output goes to a spool (memory, then a temporary
file past SPOOL_BYTES) and reaches standard output only when every document was read: bad input
anywhere prints nothing, as before, so `mutate ... | kubectl apply -f -` never applies half a
stream.

Messages name the file, the line where the document starts, and the object:
`deploy.yaml:12: Deployment shop/web: container 'web' has no CPU limit; nothing injected`.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, TextIO

import jsonpatch
import orjson
import yaml

from webhook import logs, wiring
from webhook.admission.handler import AdmissionHandler, Answer
from webhook.admission.review import ReviewError, pod_create_review
from webhook.config import Settings
from webhook.core.patch import prefixed
from webhook.core.types import Obj
from webhook.documents import Document, documents, read_input
from webhook.exitcodes import EXIT_INPUT, EXIT_OK
from webhook.workloads import (
    DocumentConfigMaps,
    InputError,
    namespace_of,
    object_name,
    pod_slots,
    source_name,
)

SPOOL_BYTES = 16 << 20
JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
# libyaml's emitter when installed: the same text as PyYAML's, far faster.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class Mutated:
    """One document's outcome: the result (mutated object or response review) and its patch."""

    original: Any
    result: Any
    patch: list[Obj]
    where: str  # `file:line`, for messages
    invalid: bool = False  # a target held a value the API server would refuse


def run_mutate(
    filename: str,
    output: str,
    settings: Settings,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Mutate every pod in the input and print the result; exit 2 names bad input.

    Exit 2 too, after printing the result, when a target was skipped over a value the API
    server itself would refuse (`cpu: abc`): the server only warns (it never blocks a pod), and
    `mutate` gives the same answer, but the manifest would not be accepted as it is.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    logs.setup("warning", "text")
    source = source_name(filename)
    try:
        data = read_input(filename, stdin or sys.stdin.buffer)
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as spool:
            out = Output(output, spool)
            invalid = asyncio.run(_mutate_into(out, data, source, settings, stderr=stderr))
            spool.seek(0)
            shutil.copyfileobj(spool, stdout)
    except InputError as exc:
        print(f"concurrency-injector: {exc}", file=stderr)
        return EXIT_INPUT
    return EXIT_INPUT if invalid else EXIT_OK


async def _mutate_into(
    out: Output, data: bytes, source: str, settings: Settings, *, stderr: TextIO
) -> bool:
    """Each document to `out`, warnings to stderr; whether any held an invalid value."""
    # envFrom ConfigMaps in the input answer the envFrom check: a first pass collects them,
    # only when a ConfigMap and a configMapRef both appear (else it would find nothing).
    needs_configmaps = b"ConfigMap" in data and b"configMapRef" in data
    configmaps = (d.value for d in documents(data, source)) if needs_configmaps else ()
    handler = AdmissionHandler(
        settings,
        resolver=wiring.resolver(settings),
        env_reader=DocumentConfigMaps(configmaps),
        record=False,
    )
    invalid = False
    try:
        for document in documents(data, source):
            done = await mutate_document(handler, document, source=source, stderr=stderr)
            out.add(done)
            invalid = invalid or done.invalid
    finally:
        await handler.aclose()
    if not out.count:
        raise InputError(f"{source} holds no document")
    out.close()
    return invalid


async def mutate_document(
    handler: AdmissionHandler, document: Document, *, source: str, stderr: TextIO
) -> Mutated:
    """One document: every pod in it goes to the handler as the review the API server sends.

    So `mutate` answers exactly as the server would, its work caps included. The patch of a
    document is the patches of its pods, each moved under the pod's path.
    """
    value, where = document.value, f"{source}:{document.line}"
    if isinstance(value, dict) and value.get("kind") == "AdmissionReview":
        answer = await _handle(handler, value, where=where, owner=_review_owner(value))
        _warn(stderr, f"{where}: {_review_owner(value)}", answer.warnings)
        return Mutated(value, answer.review(), answer.patch, where, _invalid(answer))
    patch: list[Obj] = []
    invalid = False
    for slot in list(pod_slots(value, where=where)):
        namespace = namespace_of(value) or namespace_of(slot.pod)
        review = pod_create_review(slot.pod, namespace=namespace, uid=f"mutate-{document.line}")
        answer = await _handle(handler, review, where=where, owner=slot.owner)
        _warn(stderr, f"{where}: {slot.owner}", answer.warnings)
        patch += prefixed(answer.patch, slot.path)
        invalid = invalid or _invalid(answer)
    mutated = jsonpatch.apply_patch(value, patch) if patch else value
    return Mutated(value, mutated, patch, where, invalid)


async def mutate_documents(
    values: Iterable[Any], settings: Settings, *, stderr: TextIO
) -> list[Mutated]:
    """Documents already loaded (tests, tools): the same answers as `run_mutate` gives."""
    loaded = [Document(v, n) for n, v in enumerate(values, 1)]
    handler = AdmissionHandler(
        settings,
        resolver=wiring.resolver(settings),
        env_reader=DocumentConfigMaps(d.value for d in loaded),
        record=False,
    )
    try:
        return [await mutate_document(handler, d, source="document", stderr=stderr) for d in loaded]
    finally:
        await handler.aclose()


def _review_owner(review: Obj) -> str:
    request = review.get("request")
    pod = request.get("object") if isinstance(request, dict) else None
    return f"AdmissionReview Pod {object_name(pod)}" if isinstance(pod, dict) else "AdmissionReview"


def _invalid(answer: Answer) -> bool:
    return answer.decision is not None and answer.decision.invalid


async def _handle(handler: AdmissionHandler, review: Obj, *, where: str, owner: str) -> Answer:
    try:
        return await handler.handle(review)
    except ReviewError as exc:
        raise InputError(f"{where}: {owner}: {exc}") from None


def _warn(stderr: TextIO, where: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"Warning: {where}: {warning}", file=stderr)


class Output:
    """Results written as they come, in the format the whole list always had.

    One document prints as itself; several print as a YAML stream, one JSON `List` (its items
    the results), or one JSON array of patches. The first result waits for the second to know
    which.
    """

    def __init__(self, output: str, stream: IO[str]) -> None:
        self.output = output
        self.stream = stream
        self.count = 0
        self.first: Mutated | None = None
        self.dumper: Any = None

    def add(self, done: Mutated) -> None:
        self.count += 1
        if self.output == "yaml":
            if self.dumper is None:
                self.dumper = _Dumper(self.stream, default_flow_style=False, sort_keys=False)
                self.dumper.open()
            self.dumper.represent(done.result)
            return
        if self.count == 1:
            self.first = done
            return
        if self.count == 2 and self.first is not None:
            head = '{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [\n'
            self.stream.write(head if self.output == "json" else "[\n")
            self._item(self.first)
            self.first = None
        self.stream.write(",\n")
        self._item(done)

    def close(self) -> None:
        if self.dumper is not None:
            self.dumper.close()
            self.dumper.dispose()
        elif self.first is not None:
            self.stream.write(_json(self._value(self.first), self.first.where) + "\n")
        elif self.count > 1:
            self.stream.write("\n  ]\n}\n" if self.output == "json" else "\n]\n")

    def _value(self, done: Mutated) -> Any:
        return done.patch if self.output == "patch" else done.result

    def _item(self, done: Mutated) -> None:
        """One item of the JSON list, indented as orjson indents the whole list."""
        pad = "    " if self.output == "json" else "  "
        text = _json(self._value(done), done.where)
        self.stream.write(pad + text.replace("\n", "\n" + pad))


def _json(value: Any, where: str) -> str:
    try:
        return orjson.dumps(value, default=_json_default, option=JSON_OPTIONS).decode()
    except orjson.JSONEncodeError as exc:
        raise InputError(f"{where}: cannot be written as JSON: {exc}") from None


def _json_default(value: Any) -> Any:
    """YAML's `!!binary` as Kubernetes writes bytes in JSON (base64); nothing else is taken."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"a YAML {type(value).__name__} has no JSON form")

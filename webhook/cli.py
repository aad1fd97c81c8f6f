"""The command line: `serve` (the webhook server) and `mutate` (offline, on files)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import jsonpatch
import orjson
import yaml

from webhook import __version__, logs, selftest, wiring
from webhook.admission.handler import AdmissionHandler, Answer
from webhook.admission.review import ReviewError, pod_create_review
from webhook.config import ConfigError, Settings, env_name
from webhook.core.patch import prefixed
from webhook.core.types import Obj
from webhook.native import command as native_command
from webhook.serving import server
from webhook.survey import command as survey_command
from webhook.workloads import DocumentConfigMaps, InputError, namespace_of, pod_slots

EXIT_INPUT = 2


def _registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="registry reached over plain HTTP or unverified TLS (repeatable)",
    )
    parser.add_argument(
        "--registry-timeout",
        type=float,
        metavar="SECONDS",
        help="time budget for registry lookups per review (default 2)",
    )
    parser.add_argument(
        "--no-registry",
        action="store_true",
        default=None,
        help="never read image metadata from registries",
    )
    parser.add_argument(
        "--platform",
        metavar="OS/ARCH",
        help="platform picked from multi-arch images (default linux/amd64)",
    )
    parser.add_argument(
        "--docker-config", metavar="FILE", help="Docker config.json with registry credentials"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="concurrency-injector",
        description="Set WEB_CONCURRENCY for Python web servers from their CPU limit.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the admission webhook server over TLS")
    serve.add_argument("--cert-file", metavar="FILE", help="serving certificate (PEM)")
    serve.add_argument("--key-file", metavar="FILE", help="its private key (PEM)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8443)")
    serve.add_argument("--mode", choices=["enforce", "audit"], help="patch pods, or only report")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "text", "auto"])
    serve.add_argument(
        "--dev",
        action="store_true",
        help="make a throwaway CA and certificate and print how to call the server",
    )
    _registry_flags(serve)

    mutate = commands.add_parser("mutate", help="mutate Pods or workloads from a file, offline")
    mutate.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="YAML or JSON file, or - for standard input",
    )
    mutate.add_argument("-o", "--output", choices=["yaml", "json", "patch"], default="yaml")
    mutate.add_argument("--mode", choices=["enforce", "audit"])
    _registry_flags(mutate)
    survey_command.add_parsers(commands, _registry_flags)
    selftest.add_parser(commands)
    native_command.add_parser(commands)
    return parser


def apply_flags(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Flags become their CONCURRENCY_INJECTOR_* variables, overriding the environment."""
    for name in (
        "cert_file",
        "key_file",
        "host",
        "port",
        "mode",
        "log_level",
        "log_format",
        "registry_timeout",
        "platform",
        "docker_config",
    ):
        value = getattr(args, name, None)
        if value is not None:
            environ[env_name(name)] = str(value)
    if getattr(args, "no_registry", None):
        environ[env_name("no_registry")] = "true"
    if getattr(args, "insecure_registry", None):
        environ[env_name("insecure_registry")] = ",".join(args.insecure_registry)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "selftest":  # a client of the API server: no server settings
        return selftest.run(args)
    if args.command == "serve" and args.dev:
        server.prepare_dev(args, os.environ)
    apply_flags(args, os.environ)  # type: ignore[arg-type]
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"concurrency-injector: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.command == "serve":
        return server.serve(settings)
    if args.command in ("explain", "survey"):
        return survey_command.run(args, settings)
    if args.command == "policy":
        return native_command.run(args, settings)
    return run_mutate(args.filename, args.output, settings)


def run_mutate(
    filename: str,
    output: str,
    settings: Settings,
    *,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Mutate every pod in the input and print the result; exit 2 names bad input."""
    logs.setup("warning", "text")
    try:
        documents = load_documents(filename)
        results = asyncio.run(mutate_documents(documents, settings, stderr=stderr))
    except InputError as exc:
        print(f"concurrency-injector: {exc}", file=stderr)
        return EXIT_INPUT
    write_output(results, output, stdout)
    return 0


def load_documents(filename: str) -> list[Any]:
    try:
        if filename == "-":
            text = sys.stdin.read()
        else:
            with open(filename, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise InputError(f"cannot read {filename}: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InputError(f"{filename} is not valid YAML or JSON: {exc}") from None
    if not documents:
        raise InputError(f"{filename} holds no document")
    return documents


async def mutate_documents(
    documents: list[Any], settings: Settings, *, stderr: TextIO
) -> list[tuple[Any, Any, list[Obj]]]:
    """(original, result, patch) per document; result is the mutated object or a response review.

    Every pod goes to the webhook's own handler as the Pod CREATE review the API server would
    send, so `mutate` answers exactly as the server would, its work caps included. The patch of
    a document is the patches of its pods, each moved under the pod's path.
    """
    handler = AdmissionHandler(
        settings,
        resolver=wiring.resolver(settings),
        env_reader=DocumentConfigMaps(documents),  # ConfigMaps in the input answer envFrom
        record=False,
    )
    try:
        results = []
        for n, document in enumerate(documents, 1):
            where = f"document {n}"
            if isinstance(document, dict) and document.get("kind") == "AdmissionReview":
                answer = await _handle(handler, document, where=where)
                _warn(stderr, where, answer.warnings)
                results.append((document, answer.review(), answer.patch))
                continue
            patch = []
            for slot in list(pod_slots(document, where=where)):
                namespace = namespace_of(document) or namespace_of(slot.pod)
                review = pod_create_review(slot.pod, namespace=namespace, uid=f"mutate-{n}")
                answer = await _handle(handler, review, where=f"{where}: {slot.owner}")
                _warn(stderr, where, answer.warnings)
                patch += prefixed(answer.patch, slot.path)
            mutated = jsonpatch.apply_patch(document, patch) if patch else document
            results.append((document, mutated, patch))
        return results
    finally:
        await handler.aclose()


async def _handle(handler: AdmissionHandler, review: Obj, *, where: str) -> Answer:
    try:
        return await handler.handle(review)
    except ReviewError as exc:
        raise InputError(f"{where}: {exc}") from None


def _warn(stderr: TextIO, where: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"Warning: {where}: {warning}", file=stderr)


def write_output(results: list[tuple[Any, Any, list[Obj]]], output: str, stdout: TextIO) -> None:
    if output == "patch":
        patches = [patch for _, _, patch in results]
        stdout.write(
            orjson.dumps(
                patches[0] if len(patches) == 1 else patches, option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
        return
    objects = [result for _, result, _ in results]
    if output == "json":
        value = (
            objects[0]
            if len(objects) == 1
            else {"apiVersion": "v1", "kind": "List", "items": objects}
        )
        stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    stdout.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))

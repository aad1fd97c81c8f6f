"""The `explain` and `survey` subcommands: flags, inputs and exit codes around the pure parts."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any, TextIO

from webhook import logs, wiring
from webhook.admission.handler import AdmissionHandler
from webhook.admission.types import EnvSourceReader
from webhook.config import Settings
from webhook.exitcodes import EXIT_ENVIRONMENT, EXIT_INPUT
from webhook.survey import explain as explaining
from webhook.survey.cluster import Cluster, Forbidden, Unreachable, connect
from webhook.workloads import DocumentConfigMaps, InputError, naming_file


def add_parsers(commands: Any, registry_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `explain` and `survey` on the main parser's subcommands."""
    explain = commands.add_parser(
        "explain", help="why each container of each pod gets what it gets (or nothing)"
    )
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", metavar="FILE", help="YAML or JSON file, or -")
    source.add_argument("--pod", metavar="NS/NAME", help="a pod of the cluster")
    _cluster_flags(explain)
    explain.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="one line per reason, or one JSON object (default text)",
    )
    registry_flags(explain)

    survey = commands.add_parser(
        "survey", help="which Python containers run more (or fewer) workers than CPUs, read-only"
    )
    survey.add_argument("-f", "--filename", metavar="FILE", help="manifests instead of a cluster")
    _cluster_flags(survey)
    scope = survey.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", metavar="NS", help="one namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    survey.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "markdown"],
        default="table",
        help="an aligned table, a JSON object {rows, summary}, or a Markdown table (default table)",
    )
    survey.add_argument(
        "--node-cpus",
        type=int,
        metavar="N",
        help="CPUs of the node, for runtimes that default to its CPU count (with -f)",
    )
    survey.add_argument(
        "--page-size", type=int, default=500, metavar="N", help="objects per list call"
    )
    registry_flags(survey)


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: the usual)")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context")


def run(
    args: argparse.Namespace,
    settings: Settings,
    *,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    logs.setup("warning", "text")
    try:
        if args.command == "explain":
            return run_explain(args, settings, stdout=stdout)
        from webhook.survey import survey

        return survey.run(args, settings, stdout=stdout, stderr=stderr)
    except InputError as exc:
        print(f"concurrency-injector: {exc}", file=stderr)
        return EXIT_INPUT
    except (Unreachable, Forbidden) as exc:
        print(f"concurrency-injector: {exc}", file=stderr)
        return EXIT_ENVIRONMENT


def run_explain(args: argparse.Namespace, settings: Settings, *, stdout: TextIO) -> int:
    from webhook.cli import load_documents

    reader: EnvSourceReader
    if args.filename:
        documents = load_documents(args.filename)
        reader = DocumentConfigMaps(documents)
        with naming_file(args.filename):
            found = list(explaining.workloads(documents))
    else:
        namespace, _, name = str(args.pod).partition("/")
        if not name:
            raise InputError(f"--pod {args.pod!r}: expected NAMESPACE/NAME")
        cluster = Cluster(connect(args.kubeconfig, args.context))
        pod = cluster.pod(namespace, name)
        reader = cluster_configmaps(cluster)
        found = [explaining.Workload("Pod", namespace, name, pod)]
    with naming_file(args.filename):
        explained = asyncio.run(_explain_all(found, settings, reader))
    explaining.write(explained, args.output, stdout)
    return 0


def cluster_configmaps(cluster: Cluster) -> EnvSourceReader:
    """The server's own envFrom reader, on the survey's credentials."""
    from kubernetes import client

    from webhook.kube import ConfigMapReader

    return ConfigMapReader(client.CoreV1Api(cluster.api_client))


async def _explain_all(
    found: list[explaining.Workload], settings: Settings, reader: EnvSourceReader
) -> list[explaining.Explained]:
    handler = AdmissionHandler(
        settings, resolver=wiring.resolver(settings), env_reader=reader, record=False
    )
    try:
        out = []
        for workload in found:
            answer = await explaining.decide(handler, workload)
            out += explaining.explain(workload, answer)
        return out
    finally:
        await handler.aclose()

"""`concurrency-injector policy`: print the native-mode objects for the active settings."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import orjson
import yaml

from webhook.config import Settings
from webhook.core.options import Options
from webhook.core.profiles import active
from webhook.exitcodes import EXIT_INPUT
from webhook.native.policy import KubeVersion, PolicyError, objects

DEFAULT_KUBE_VERSION = "1.36"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser(
        "policy",
        help="print MutatingAdmissionPolicy objects for what CEL can decide (native mode)",
    )
    policy.add_argument(
        "--kube-version",
        default=DEFAULT_KUBE_VERSION,
        metavar="MAJOR.MINOR",
        help=f"Kubernetes version the objects are for (default {DEFAULT_KUBE_VERSION}; "
        "1.34 and 1.35 get v1beta1)",
    )
    policy.add_argument(
        "-o",
        "--output",
        choices=["yaml", "json"],
        default="yaml",
        help="the objects as a YAML stream or a JSON List (default yaml)",
    )
    policy.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="namespace never selected, besides kube-system and kube-node-lease (repeatable)",
    )


def run(
    args: argparse.Namespace,
    settings: Settings,
    *,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Print the objects; exit 2 names what cannot be generated."""
    # The tables hold every profile, disabled ones too: the policy's `disabledProfiles`
    # variable turns them off, so the chart can change that list without new CEL.
    options = Options.of(settings, active(settings.extra_profiles))
    try:
        docs = objects(
            options,
            kube=KubeVersion.parse(args.kube_version),
            disabled=settings.disabled_profiles,
            excluded_namespaces=args.exclude_namespace,
            max_containers=settings.max_containers,
            max_env_entries=settings.max_env_entries,
            max_annotation_bytes=settings.max_annotation_bytes,
        )
    except PolicyError as exc:
        print(f"concurrency-injector: {exc}", file=stderr)
        return EXIT_INPUT
    if args.output == "json":
        value = {"apiVersion": "v1", "kind": "List", "items": docs}
        stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        stdout.write(yaml.safe_dump_all(docs, sort_keys=False, width=100))
    return 0

"""The command line: `serve` (the webhook server) and `mutate` (offline, on files)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from webhook import __version__, selftest
from webhook.config import ConfigError, Settings, env_name
from webhook.documents import documents, read_input
from webhook.exitcodes import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK
from webhook.mutate import run_mutate
from webhook.native import command as native_command
from webhook.serving import server
from webhook.survey import command as survey_command
from webhook.workloads import InputError, source_name

# The settings a flag of the same name overrides (the README's settings table lists them all).
FLAG_SETTINGS = frozenset(
    {
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
        "no_registry",
        "insecure_registry",
    }
)
EPILOG = f"""\
exit codes:
  {EXIT_OK}  done (warnings may be printed)
  {EXIT_INPUT}  bad input: a message names the file (or setting) and the object
  {EXIT_ENVIRONMENT}  the environment: a missing tool, an unreachable cluster, a port in use

environment:
  Every setting is also read from a CONCURRENCY_INJECTOR_<NAME> variable; a flag overrides
  its variable (shown in [brackets]). The README's "Configuration" table lists them all.
"""


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
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="`COMMAND --help` says more"
    )

    serve = commands.add_parser(
        "serve",
        help="run the admission webhook server over TLS",
        description="Run the admission webhook server over TLS: POST /mutate, GET /healthz,\n"
        "/readyz and /metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--cert-file", metavar="FILE", help="serving certificate (PEM)")
    serve.add_argument("--key-file", metavar="FILE", help="its private key (PEM)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8443)")
    serve.add_argument("--mode", choices=["enforce", "audit"], help="patch pods, or only report")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe log lines written (default info)",
    )
    serve.add_argument(
        "--log-format",
        choices=["json", "text", "auto"],
        help="JSON lines, text, or text on a terminal and JSON otherwise (default auto)",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        help="make a throwaway CA and certificate and print how to call the server",
    )
    _registry_flags(serve)

    mutate = commands.add_parser(
        "mutate",
        help="mutate Pods or workloads from a file, offline",
        description="Mutate Pods, workloads, Lists and AdmissionReviews from a file, offline,\n"
        "as the server would; other documents pass through unchanged. Warnings go to\n"
        "stderr. Exit 2 (after printing the result) when a target holds a value the API\n"
        "server refuses, such as cpu: abc.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mutate.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="YAML or JSON file, or - for standard input",
    )
    mutate.add_argument(
        "-o",
        "--output",
        choices=["yaml", "json", "patch"],
        default="yaml",
        help="the mutated objects as YAML or JSON, or only the JSON Patch (default yaml)",
    )
    mutate.add_argument("--mode", choices=["enforce", "audit"], help="patch pods, or only report")
    _registry_flags(mutate)
    survey_command.add_parsers(commands, _registry_flags)
    for command in (serve, mutate, commands.choices["explain"], commands.choices["survey"]):
        name_variables(command)
    selftest.add_parser(commands)
    native_command.add_parser(commands)
    return parser


def name_variables(parser: argparse.ArgumentParser) -> None:
    """Each flag's help names the CONCURRENCY_INJECTOR_* variable that it overrides."""
    for action in parser._actions:
        if action.dest in FLAG_SETTINGS and action.help:
            action.help += f" [{env_name(action.dest)}]"


def apply_flags(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Flags become their CONCURRENCY_INJECTOR_* variables, overriding the environment."""
    for name in FLAG_SETTINGS - {"no_registry", "insecure_registry"}:
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


def load_documents(filename: str) -> list[Any]:
    """Every document of FILE (or `-`), loaded within the input bounds; InputError otherwise."""
    source = source_name(filename)
    found = [d.value for d in documents(read_input(filename, sys.stdin.buffer), source)]
    if not found:
        raise InputError(f"{source} holds no document")
    return found

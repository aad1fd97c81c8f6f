#!/usr/bin/env python3
"""Checks that the release versions agree: the package (webhook/__init__.py), the chart's
`version` and `appVersion` (the image tag the chart uses by default), and a release tag.

    hack/check-version.py                 # package == chart version == appVersion
    hack/check-version.py --tag v0.2.0    # and the tag is v + that version (release.yml)
    hack/check-version.py --print         # print the version (release.yml names things with it)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "webhook" / "__init__.py"
CHART = ROOT / "charts" / "concurrency-injector" / "Chart.yaml"
VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)


def package_version(text: str) -> str:
    found = VERSION_LINE.search(text)
    if not found:
        raise SystemExit(f"{PACKAGE.relative_to(ROOT)}: no __version__ line")
    return found.group(1)


def mismatches(package: str, chart: dict[str, object], tag: str | None) -> list[str]:
    """Every way the versions disagree, each naming both sides; empty when they agree."""
    problems = []
    for key in ("version", "appVersion"):
        if str(chart.get(key)) != package:
            problems.append(f"Chart.yaml {key} is {chart.get(key)!r}, the package is {package!r}")
    if tag is not None and tag != f"v{package}":
        problems.append(f"the tag is {tag!r}, the package is {package!r} (expected 'v{package}')")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="the release tag (vX.Y.Z)")
    parser.add_argument("--print", action="store_true", help="print the package version")
    args = parser.parse_args(argv)
    package = package_version(PACKAGE.read_text())
    problems = mismatches(package, yaml.safe_load(CHART.read_text()), args.tag)
    for problem in problems:
        print(f"check-version: {problem}", file=sys.stderr)
    if problems:
        return 1
    if args.print:
        print(package)
    return 0


if __name__ == "__main__":
    sys.exit(main())

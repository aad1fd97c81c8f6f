"""The READMEs say what the code does: settings, metrics, chart values and example outputs.

Each list is read from the code (the settings dataclass, the metrics the package registers,
values.yaml, the commands themselves), never copied by hand, and compared both ways.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import webhook
from webhook.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHART = ROOT / "charts" / "concurrency-injector"
NAME = re.compile(r"`([^`]+)`")
OUTPUT_MARK = re.compile(r"<!-- output: (.+?) -->\n```[a-z]*\n(.*?)```", re.S)


def table_after(text: str, marker: str) -> list[list[str]]:
    """The cells of each body row of the first Markdown table after `marker`."""
    lines = text[text.index(marker) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([c.strip() for c in cells])
    return rows


# --- settings -------------------------------------------------------------------------------------


def test_settings_table_lists_every_setting_and_only_those() -> None:
    """README "Configuration": one row (or a name in a row) per `Settings` field."""
    rows = table_after(README.read_text(), "## Configuration")
    documented = [name for row in rows for name in NAME.findall(row[0])]
    assert len(documented) == len(set(documented)), "a setting is listed twice"
    defined = {f.name.upper() for f in fields(Settings)}
    assert sorted(defined - set(documented)) == [], "settings missing from the README"
    assert sorted(set(documented) - defined) == [], "README rows that are no setting"


# --- metrics --------------------------------------------------------------------------------------


def registered_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric any module of the package defines: exposed name -> (type, label names)."""
    for info in pkgutil.walk_packages(webhook.__path__, "webhook."):
        if not info.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(info.name)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("webhook"):
            continue
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                family = next(iter(value.describe()))
                exposed = family.name + ("_total" if family.type == "counter" else "")
                found[exposed] = (family.type, tuple(value._labelnames))
    return found


def test_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = table_after(README.read_text(), "Metrics on `GET /metrics`")
    documented = {
        NAME.findall(row[0])[0]: (row[1], tuple(NAME.findall(row[2]))) for row in rows
    }
    registered = registered_metrics()
    assert len(registered) >= 10
    assert sorted(set(registered) - set(documented)) == [], "metrics missing from the README"
    assert sorted(set(documented) - set(registered)) == [], "README rows that are no metric"
    assert documented == registered


# --- chart values ---------------------------------------------------------------------------------


def test_chart_readme_values_table_is_current() -> None:
    """hack/chart-readme.py --check: every value of values.yaml has its row, generated from the
    comment above its key, and the table holds nothing else."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart-readme.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_value_named_in_a_chart_readme_table_exists() -> None:
    """Rows of the chart README's other tables name real values (e.g. the settings table)."""
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def exists(dotted: str) -> bool:
        node = values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    text = (CHART / "README.md").read_text()
    rows = table_after(text, "The server's settings:")
    named = [n for row in rows for n in NAME.findall(row[0])]
    assert named
    assert [n for n in named if not exists(n)] == []


# --- example outputs ------------------------------------------------------------------------------


def marked_outputs() -> list[tuple[str, str]]:
    """README blocks preceded by `<!-- output: COMMAND -->`: (command, the block's text)."""
    return [(m[1], m[2]) for m in OUTPUT_MARK.finditer(README.read_text())]


def test_readme_marks_its_example_outputs() -> None:
    commands = [command for command, _ in marked_outputs()]
    assert any("-o patch" in c for c in commands)


@pytest.mark.parametrize(("command", "block"), marked_outputs(), ids=lambda v: v[:60])
def test_readme_example_output_is_what_the_command_prints(command: str, block: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "concurrency-injector"
    done = subprocess.run(
        [sys.executable, "-m", "webhook", *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = block
    if shown.startswith("$ "):  # a console block: the prompt line, then what was printed
        first, _, shown = shown.partition("\n")
        assert first[2:] == command
    assert shown.rstrip("\n") == (done.stdout + done.stderr).rstrip("\n")


# --- no claim of a release that does not exist ----------------------------------------------------

USER_DOCS = [README, CHART / "README.md", CHART / "templates" / "NOTES.txt"]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_claim_no_published_package_and_mark_release_placeholders(path: Path) -> None:
    """No release exists yet: nothing says `pip install concurrency-injector` or adds a Helm
    repository, and every ghcr.io name of this project has the placeholder OWNER."""
    text = path.read_text()
    assert "pip install concurrency-injector" not in text
    assert "helm repo add" not in text
    own = re.findall(r"ghcr\.io/([^/\s`'\"]+)/(?:charts/)?concurrency-injector", text)
    assert set(own) <= {"OWNER"}, own

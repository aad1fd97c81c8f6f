"""The CEL of the native policies: what kube-apiserver evaluates instead of the webhook. Pure.

Which containers CEL decides is a subset of what the webhook decides, chosen so that on that
subset the two store the same env (tests/apiserver/test_native.py holds them equal):

- the pod carries none of the annotations that change the rules (a container list, audit
  mode, override, per-pod worker settings, an earlier status), and stays inside the webhook's
  work caps;
- the container is an app container without `envFrom` (CEL cannot read a ConfigMap), and
  either has its own CPU limit in whole or milli cores, or no CPU limit at all while the pod
  has none either (then nothing is set, as by the webhook);
- its exec-form command (`command` + `args`) starts, after one wrapper (`tini --`, `env`,
  `uv run`, ...), with a profile's executable, launcher (`fastapi run`), or `python -m MODULE`;
  or the pod names its runtime by annotation (the default container).

Everything else (shell scripts, entrypoint scripts, image metadata from registries, envFrom,
pod-level CPU limits) is left to the webhook. webhook/native/classify.py is the same rule in
Python; the README's "Native mode" table states it.

Every setting the chart may change is a policy variable with a literal expression (SETTINGS),
so the chart renders the generated CEL unchanged and substitutes only those literals.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from webhook.core import keys
from webhook.core.commands import RUN_SUBCOMMANDS, RUNNERS, SHELLS, WRAPPERS
from webhook.core.options import MAX_WORKER_COUNT, Options
from webhook.core.profiles import GENERIC, GENERIC_PROFILE, Profile, ProfileSet

# The annotation the policy writes: the containers it decided, comma-separated. The webhook
# leaves those containers alone (hybrid mode), and audits can tell who set what.
MARKER = keys.NATIVE
# Annotations that change the rules for the whole pod: the policy leaves such pods to the webhook.
POD_RULE_ANNOTATIONS = (
    keys.WORKERS_PER_CPU,
    keys.MIN_WORKERS,
    keys.MAX_WORKERS,
    keys.MEMORY_PER_WORKER,
    keys.STATUS,
)
PYTHON_RE = "^python([0-9]+([.][0-9]+)?)?$"
# CPU quantities CEL reads exactly, as millicores (canonical quantities are one of these).
CPU_WHOLE = "^[0-9]{1,7}$"
CPU_MILLI = "^[0-9]{1,10}m$"
CPU_DECIMAL = "^[0-9]{1,7}[.][0-9]{1,3}$"
MAX_DECIMALS = 6  # of workers-per-cpu
ANY_OPERAND = "!w.startsWith('-')"


def lit(value: str) -> str:
    """A CEL string literal."""
    return json.dumps(value, ensure_ascii=False)


def str_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(lit(v) for v in values) + "]"


def str_map(values: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in values.items()) + "}"


@dataclass(frozen=True)
class Forms:
    """The command forms CEL reads, from the active profiles (the reader's own tables)."""

    executables: dict[str, Profile]  # program basename -> profile
    modules: dict[str, Profile]  # python -m MODULE -> profile
    launchers: dict[str, tuple[tuple[tuple[str, ...], Profile], ...]]  # program -> entries
    wrappers: frozenset[str]
    runners: frozenset[str]

    @classmethod
    def of(cls, profiles: ProfileSet) -> Forms:
        programs = set(profiles.by_executable) | set(profiles.by_launcher)
        # A name the reader would take as something else first is not read by CEL at all.
        clash = programs | set(SHELLS)
        return cls(
            executables=dict(profiles.by_executable),
            modules=dict(profiles.by_module),
            launchers=dict(profiles.by_launcher),
            wrappers=frozenset(WRAPPERS - clash),
            runners=frozenset(RUNNERS - clash - WRAPPERS),
        )


def settings_variables(options: Options, *, disabled: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The settings as (variable, literal expression): what the chart substitutes."""
    wpc = format(options.workers_per_cpu.normalize(), "f")
    if "." in wpc and len(wpc.split(".")[1]) > MAX_DECIMALS:
        raise ValueError(f"workers per CPU {wpc}: at most {MAX_DECIMALS} decimals in native mode")
    mpw = options.memory_per_worker
    return [
        ("workersPerCpu", lit(wpc)),
        ("minWorkers", str(options.min_workers)),
        ("maxWorkers", str(options.max_workers or 0)),
        ("rounding", lit(options.rounding)),
        ("pythonCpuCount", "true" if options.python_cpu_count else "false"),
        ("resizeRestart", "true" if options.resize_restart else "false"),
        ("memoryPerWorker", lit(_quantity_text(mpw) if mpw is not None else "")),
        # Compact, as the chart's toJson writes it.
        ("disabledProfiles", json.dumps(list(disabled), separators=(",", ":"))),
    ]


def _quantity_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _base(word: str) -> str:
    return f"{word}.substring({word}.lastIndexOf('/') + 1)"


OPERANDS = "variables.operands[i]"


def _subcommand_test(names: tuple[str, ...], first: int) -> str:
    """`celery -A p worker`: one of the first three operands after the program is a subcommand."""
    return f"{OPERANDS}.exists(k, w, k >= {first} && k <= {first + 2} && w in {str_list(names)})"


def _launcher_test(entries: tuple[tuple[tuple[str, ...], Profile], ...], first: int) -> str:
    """The profile of the longest launcher subcommand the operands start with, else ''."""
    expr = "''"
    for words, profile in reversed(entries):  # longest first wins: build from the end
        tests = [f"size({OPERANDS}) > {first + len(words) - 1}"]
        tests += [f"{OPERANDS}[{first + n}] == {lit(word)}" for n, word in enumerate(words)]
        expr = f"({' && '.join(tests)} ? {lit(profile.name)} : {expr})"
    return expr


def _by_name(table: Mapping[str, Profile], key: str, first: int) -> str:
    """The profile `key` names in `table` ('' for none); one with subcommands needs one of them
    among the operands from `first` on."""
    plain = {n: p.name for n, p in table.items() if not p.subcommands}
    expr = f"{str_map(plain)}[?{key}].orValue('')"
    for name, p in table.items():
        if p.subcommands:
            test = _subcommand_test(p.subcommands, first)
            expr = f"({key} == {lit(name)} ? ({test} ? {lit(p.name)} : '') : {expr})"
    return expr


def _launched(
    launchers: Mapping[str, tuple[tuple[tuple[str, ...], Profile], ...]],
    key: str,
    first: int,
    *,
    skip: Container[str] = (),
) -> str:
    """The profile a launcher that `key` names starts (its operands from `first` on), or ''."""
    expr = "''"
    for name, entries in launchers.items():
        if name not in skip:
            expr = f"({key} == {lit(name)} ? {_launcher_test(entries, first)} : {expr})"
    return expr


def detected_expression(forms: Forms) -> str:
    """Per container (its command after the wrapper, `a`): the profile name CEL reads, or ''."""
    program = "variables.program[i]"
    exe = _by_name(forms.executables, program, 1)
    launched = _launched(forms.launchers, program, 1)
    module = _by_name(forms.modules, "a[2]", 2)
    launched_module = _launched(forms.launchers, "a[2]", 2, skip=forms.modules)
    python = (
        f"({program}.matches({lit(PYTHON_RE)}) && size(a) > 2 && a[1] == '-m' ? "
        f"(a[2] in {str_list(forms.modules)} ? {module} : {launched_module}) : '')"
    )
    return (
        f"variables.command.transformList(i, a, size(a) == 0 ? '' : "
        f"({exe} != '' ? {exe} : ({launched} != '' ? {launched} : {python})))"
    )


def offset_expression(forms: Forms) -> str:
    """Per container: how many words of its argv the one wrapper CEL recognises takes."""
    program = _base("a[0]")
    return (
        f"variables.argv.map(a, size(a) == 0 ? 0 : "
        f"({program} in {str_list(sorted(forms.runners))} && size(a) > 1 && "
        f"a[1] in {str_list(sorted(RUN_SUBCOMMANDS))} ? (size(a) > 2 && a[2] == '--' ? 3 : 2) : "
        f"({program} in {str_list(sorted(forms.wrappers))} ? "
        f"(size(a) > 1 && a[1] == '--' ? 2 : 1) : 0)))"
    )


def _env_table(profiles: ProfileSet) -> str:
    table = {GENERIC: list(GENERIC_PROFILE.env)}
    table.update({name: list(p.env) for name, p in profiles.profiles.items()})
    return "{" + ", ".join(f"{lit(k)}: {str_list(v)}" for k, v in table.items()) + "}"


def _has_limit(resource: str, holder: str = "c") -> str:
    return (
        f"has({holder}.resources) && has({holder}.resources.limits) && "
        f"{lit(resource)} in {holder}.resources.limits"
    )


def variables(options: Options, *, disabled: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Every policy variable, in order (a variable may use those before it)."""
    profiles = options.profiles
    forms = Forms.of(profiles)
    names = [GENERIC, *profiles.names()]
    cli_only = [n for n, p in profiles.profiles.items() if p.cli_workers_only]
    env = _env_table(profiles)
    annotation = "variables.annotations[?{key}].orValue('')"
    millis = (
        f"variables.cpu.map(s, s == '' ? 0 : s.matches({lit(CPU_WHOLE)}) ? int(s) * 1000 : "
        f"s.matches({lit(CPU_MILLI)}) ? int(s.substring(0, size(s) - 1)) : "
        f"s.matches({lit(CPU_DECIMAL)}) ? int(s.split('.')[0]) * 1000 + "
        f"int(s.split('.')[1]) * {{1: 100, 2: 10, 3: 1}}[size(s.split('.')[1])] : -1)"
    )
    raw = (
        "variables.millis.map(m, variables.rounding == 'ceil' ? "
        "(m * variables.wpcNum + 1000 * variables.wpcDen - 1) / (1000 * variables.wpcDen) : "
        "variables.rounding == 'round' ? "
        "(2 * m * variables.wpcNum + 1000 * variables.wpcDen) / (2000 * variables.wpcDen) : "
        "m * variables.wpcNum / (1000 * variables.wpcDen))"
    )
    return [
        *settings_variables(options, disabled=disabled),
        ("wpcParts", "variables.workersPerCpu.split('.')"),
        ("wpcNum", "int(variables.wpcParts.join(''))"),
        (
            "wpcDen",
            "size(variables.wpcParts) == 1 ? 1 : "
            "{1: 10, 2: 100, 3: 1000, 4: 10000, 5: 100000, 6: 1000000}"
            "[size(variables.wpcParts[1])]",
        ),
        (
            "mpwBytes",
            "variables.memoryPerWorker == '' ? 0 : "
            "quantity(variables.memoryPerWorker).isInteger() ? "
            "quantity(variables.memoryPerWorker).asInteger() : -1",
        ),
        ("annotations", "object.metadata.?annotations.orValue({})"),
        ("runtimeAnnotation", annotation.format(key=lit(keys.RUNTIME)) + ".trim().lowerAscii()"),
        (
            "annotated",
            f"variables.runtimeAnnotation == {lit(GENERIC)} || "
            f"(variables.runtimeAnnotation in {str_list(names)} && "
            "!(variables.runtimeAnnotation in variables.disabledProfiles))",
        ),
        (
            "multiWorker",
            annotation.format(key=lit(keys.MULTI_WORKER)) + ".trim().lowerAscii() == 'true'",
        ),
        ("names", "object.spec.containers.map(c, c.name)"),
        ("defaultName", annotation.format(key=lit(keys.DEFAULT_CONTAINER))),
        (
            "defaultIndex",
            "variables.defaultName != '' && variables.defaultName in variables.names ? "
            "variables.names.indexOf(variables.defaultName) : 0",
        ),
        ("argv", "object.spec.containers.map(c, c.?command.orValue([]) + c.?args.orValue([]))"),
        ("offset", offset_expression(forms)),
        (
            "command",
            "variables.argv.transformList(i, a, "
            "a.transformList(j, w, j >= variables.offset[i], w))",
        ),
        ("program", f"variables.command.map(a, size(a) == 0 ? '' : {_base('a[0]')})"),
        ("operands", f"variables.command.map(a, a.filter(w, {ANY_OPERAND}))"),
        ("detected", detected_expression(forms)),
        (
            "runtime",
            "variables.annotated ? variables.names.transformList(i, n, "
            "i == variables.defaultIndex ? variables.runtimeAnnotation : '') : "
            "variables.detected.map(r, r in variables.disabledProfiles ? '' : r)",
        ),
        (
            "cpu",
            f"object.spec.containers.map(c, {_has_limit('cpu')} ? "
            "string(c.resources.limits['cpu']) : '')",
        ),
        ("podCpu", _has_limit("cpu", "object.spec")),
        ("millis", millis),
        (
            "memoryCap",
            f"object.spec.containers.map(c, variables.mpwBytes == 0 || !({_has_limit('memory')}) "
            "? 0 : variables.mpwBytes > 0 && "
            "quantity(string(c.resources.limits['memory'])).isInteger() ? "
            "[1, quantity(string(c.resources.limits['memory'])).asInteger() / "
            "variables.mpwBytes].max() : -1)",
        ),
        ("rawWorkers", raw),
        (
            "workers",
            "variables.rawWorkers.transformList(i, r, "
            f"[[[r, variables.minWorkers, 1].max(), {MAX_WORKER_COUNT}].min(), "
            "variables.maxWorkers > 0 ? variables.maxWorkers : "
            f"{MAX_WORKER_COUNT}, variables.memoryCap[i] > 0 ? variables.memoryCap[i] : "
            f"{MAX_WORKER_COUNT}].min())",
        ),
        (
            "decided",
            "object.spec.containers.transformList(i, c, variables.runtime[i] != '' && "
            "!(has(c.envFrom) && size(c.envFrom) > 0) && "
            "(variables.millis[i] > 0 || variables.millis[i] == 0 && "
            "(variables.cpu[i] != '' || !variables.podCpu)) && variables.memoryCap[i] >= 0 && "
            f"(!variables.annotated || !(variables.runtimeAnnotation in {str_list(cli_only)}) || "
            "variables.multiWorker || variables.detected[i] == variables.runtimeAnnotation || "
            "variables.workers[i] <= 1))",
        ),
        (
            "wanted",
            "variables.names.transformList(i, n, variables.decided[i] && variables.millis[i] > 0 "
            f"? {env}[variables.runtime[i]] : [])",
        ),
        (
            "decidedNames",
            "object.spec.containers.transformList(i, c, variables.decided[i], c.name)",
        ),
    ]
